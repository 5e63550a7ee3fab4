"""Azure OpenAI: OpenAI's wire format under a customer's resource endpoint.

base_url is the resource (`https://{resource}.openai.azure.com`), set in steward.toml: Azure has
no public host of its own. Two path families, both forwarded as sent:
- deployments: `/openai/deployments/{deployment}/chat/completions?api-version=…` (also
  completions, embeddings, audio, images; and `/openai/responses`), where `api-version` is
  mandatory (Azure answers a missing one with a bare 404, so Steward says what is missing);
- v1: `/openai/v1/chat/completions`, `/openai/v1/responses`… without api-version, the body's
  `model` naming the deployment.
Responses, streams, usage and errors are OpenAI's, read by openai.py; Azure adds content-filter
results, and a stream's first chunk may carry only `prompt_filter_results` (`choices: []`,
`model: ""`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from steward.errors import GatewayError, StewardError
from steward.providers.base import Route, endpoints, find_endpoint, rewrite_query, scoped
from steward.providers.openai import INFERENCE as OPENAI_INFERENCE
from steward.providers.openai import OpenAIFormat, _ChatStream, _ResponsesStream
from steward.providers.usage import Reading

if TYPE_CHECKING:
    from steward.config import ProviderConfig

DOCTOR_API_VERSION = "2024-10-21"  # a GA version every resource answers
_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)(/.+)")
DEPLOYMENT_INFERENCE = endpoints(
    ("POST", r"/chat/completions", "chat/completions"),
    ("POST", r"/embeddings", "embeddings"),
    ("POST", r"/completions", "completions"),
    ("POST", r"/audio/speech", "audio/speech"),
    ("POST", r"/audio/transcriptions", "audio/transcriptions"),
    ("POST", r"/audio/translations", "audio/translations"),
    ("POST", r"/images/generations", "images/generations"),
    ("POST", r"/images/edits", "images/edits"),
)
_SCOPES = {"files": "files", "uploads": "files", "batches": "batches",
           "fine_tuning": "fine_tuning"}


class _AzureChatStream(_ChatStream):
    """OpenAI's chat stream reader, past Azure's prompt-filter chunk (no model, no choices):
    the first chunk read for the model is the first one that has it."""

    __slots__ = ()

    def on_event(self, event: bytes, data: bytes, reading: Reading) -> None:
        if self._first and b'"prompt_filter_results"' in data and b'"delta"' not in data:
            return
        super().on_event(event, data, reading)

    def finish(self, reading: Reading) -> None:
        super().finish(reading)
        if not reading.response_model:
            reading.response_model = None  # "" is Azure's filler, not a model


class AzureFormat(OpenAIFormat):
    name = "azure"
    # A key goes in api-key; Entra ID tokens (and the v1 routes' keys) in Authorization.
    credential_headers = (b"api-key", b"authorization")
    default_base_url = ""  # the resource endpoint: configured, never guessed
    paths_help = ("Azure OpenAI: /openai/deployments/{deployment}/chat/completions"
                  "?api-version=…, /openai/v1/… (with providers.azure.base_url set)")
    detection_rank = 15
    is_default = False
    price_providers = ("azure",)

    def owns(self, path: str) -> bool:
        return path.startswith("/openai/")

    def classify(self, method: str, path: str) -> Route:
        deployment = _DEPLOYMENT.fullmatch(path)
        if deployment is not None:
            endpoint = find_endpoint(DEPLOYMENT_INFERENCE, method, deployment.group(2))
            if endpoint is not None:
                return Route(endpoint=endpoint.label, upstream_path=path,
                             model=deployment.group(1))
            return scoped("admin", path)
        rest = path[len("/openai/v1"):] if path.startswith("/openai/v1/") else \
            path[len("/openai"):]
        endpoint = find_endpoint(OPENAI_INFERENCE, method, rest)
        if endpoint is not None:
            return Route(endpoint=endpoint.label, upstream_path=path)
        return scoped(_SCOPES.get(rest[1:].split("/", 1)[0], "admin"), path)

    def credential_header(self, api_key: str) -> tuple[str, str]:
        return ("api-key", api_key)

    def upstream_base(self, base_url: str, route: Route, query: bytes) -> str:
        if (not route.upstream_path.startswith("/openai/v1/")
                and not rewrite_query(query, ("api-version",), None)[0]):
            raise GatewayError(400, "Azure OpenAI needs an api-version query parameter on "
                               f"{route.upstream_path} (e.g. ?api-version=2024-10-21; with "
                               "openai.AzureOpenAI, pass api_version=…), or use the "
                               "/openai/v1/ routes, which need none")
        return base_url

    def doctor(self, name: str, provider: ProviderConfig, stored: str | None) -> str:
        """The resource answers, and takes the stored key: its model list, as the SDK asks."""
        import httpx  # the CLI's doctor only: not loaded by the daemon

        if stored is None:
            raise StewardError(f"no {name} key stored: run `steward providers set {name}`")
        url = f"{provider.base_url.rstrip('/')}/openai/models?api-version={DOCTOR_API_VERSION}"
        response = httpx.get(url, headers={"api-key": stored}, timeout=10)
        if response.status_code in (401, 403):
            raise StewardError(f"{provider.base_url} refused the stored key "
                               f"({response.status_code}): store the resource's key again "
                               f"with `steward providers set {name}`")
        if response.status_code != 200:
            raise StewardError(f"{url.split('?')[0]} answered {response.status_code}; check "
                               f"providers.{name}.base_url (https://RESOURCE.openai.azure.com)")
        return f"{provider.base_url} accepted the stored key ({response.status_code})"

    def read_json(self, obj: Any, reading: Reading) -> None:
        super().read_json(obj, reading)
        if not reading.response_model:
            reading.response_model = None

    def stream_reader(self, route: Route) -> _AzureChatStream | _ResponsesStream:
        return _ResponsesStream() if route.endpoint.startswith("responses") \
            else _AzureChatStream()


FORMAT = AzureFormat()
