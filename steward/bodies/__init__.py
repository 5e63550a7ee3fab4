"""Request and response bodies: the document, the background writer, the stores."""
