// Command majordomo_ingest decodes upload batches the way Majordomo's control plane does:
// Go's encoding/json into its ingest record, whose field names, Go types and json tags are
// declared below as Majordomo's open-source steward declares them
// (superset-studio/majordomo-steward, internal/stewardclient/reporter.go, mirroring the
// control plane's ingest.MetadataRecord).
//
// Usage: majordomo_ingest BATCH_FILE...   Each file holds one request body. Every decoded
// record is printed to stdout as one JSON line; any decoding error exits with status 1.
//
// Standard library only, so it builds offline: UUID stands in for github.com/google/uuid.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// UUID decodes like google/uuid's UUID, which encoding/json reads through UnmarshalText:
// a JSON string that must parse as a UUID (a short id such as "key_e7f110c3a96b" fails with
// "invalid UUID length: 16"). google/uuid also takes the {…}, urn:uuid: and 32-hex forms;
// this check accepts only the canonical 36-character form, which is the one Steward sends,
// so it is at least as strict as the control plane.
type UUID [16]byte

func (u *UUID) UnmarshalText(text []byte) error {
	if len(text) != 36 {
		return fmt.Errorf("invalid UUID length: %d", len(text))
	}
	j := 0
	for i := 0; i < 36; i++ {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if text[i] != '-' {
				return fmt.Errorf("invalid UUID format")
			}
			continue
		}
		hi, ok1 := hexValue(text[i])
		lo, ok2 := hexValue(text[i+1])
		if !ok1 || !ok2 {
			return fmt.Errorf("invalid UUID format")
		}
		u[j] = hi<<4 | lo
		j++
		i++
	}
	return nil
}

func (u UUID) MarshalText() ([]byte, error) {
	return []byte(fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])), nil
}

func hexValue(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// MetadataRecord: Majordomo's ingest record (names, types and tags are the facts under test).
type MetadataRecord struct {
	ID                  UUID                   `json:"id"`
	UserID              *UUID                  `json:"user_id,omitempty"`
	MajordomoAPIKeyID   *UUID                  `json:"majordomo_api_key_id,omitempty"`
	ProxyKeyID          *UUID                  `json:"proxy_key_id,omitempty"`
	ProviderAPIKeyHash  string                 `json:"provider_api_key_hash,omitempty"`
	ProviderAPIKeyAlias string                 `json:"provider_api_key_alias,omitempty"`
	Provider            string                 `json:"provider"`
	Model               string                 `json:"model"`
	RequestPath         string                 `json:"request_path"`
	RequestMethod       string                 `json:"request_method"`
	RequestedAt         time.Time              `json:"requested_at"`
	RespondedAt         time.Time              `json:"responded_at"`
	ResponseTimeMS      int                    `json:"response_time_ms"`
	InputTokens         int                    `json:"input_tokens"`
	OutputTokens        int                    `json:"output_tokens"`
	CachedTokens        int                    `json:"cached_tokens"`
	CacheCreationTokens int                    `json:"cache_creation_tokens"`
	InputCost           float64                `json:"input_cost"`
	OutputCost          float64                `json:"output_cost"`
	TotalCost           float64                `json:"total_cost"`
	StatusCode          int                    `json:"status_code"`
	ErrorMessage        *string                `json:"error_message,omitempty"`
	RawMetadata         map[string]interface{} `json:"raw_metadata,omitempty"`
	IndexedMetadata     map[string]interface{} `json:"indexed_metadata,omitempty"`
	BodyS3Key           *string                `json:"body_s3_key,omitempty"`
	ModelAliasFound     bool                   `json:"model_alias_found"`
	OrgID               *UUID                  `json:"org_id,omitempty"`
	ExperimentID        *UUID                  `json:"experiment_id,omitempty"`
	ExperimentArmID     *UUID                  `json:"experiment_arm_id,omitempty"`
	OriginalModel       *string                `json:"original_model,omitempty"`
}

// Batch is the envelope Majordomo's steward posts: {"records": [...]}.
type Batch struct {
	Records []MetadataRecord `json:"records"`
}

// maxRecords is the most Majordomo's steward sends in one batch (BATCH_MAX_SIZE's default).
const maxRecords = 500

// decode is stricter than a lenient handler on purpose: an unknown field would be dropped
// silently by the control plane, so a field Steward believes it sends must exist here.
func decode(body []byte) ([]MetadataRecord, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var batch Batch
	if err := dec.Decode(&batch); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the batch object")
	}
	if batch.Records == nil {
		return nil, fmt.Errorf("no \"records\" array")
	}
	if len(batch.Records) > maxRecords {
		return nil, fmt.Errorf("%d records in one batch; at most %d", len(batch.Records), maxRecords)
	}
	for i, rec := range batch.Records {
		if rec.ID == (UUID{}) {
			return nil, fmt.Errorf("record %d: no id", i)
		}
		if rec.RequestedAt.IsZero() || rec.RespondedAt.Before(rec.RequestedAt) {
			return nil, fmt.Errorf("record %d: requested_at/responded_at missing or reversed", i)
		}
	}
	return batch.Records, nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: majordomo_ingest BATCH_FILE...")
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, path := range os.Args[1:] {
		body, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		records, err := decode(body)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(1)
		}
		for _, rec := range records {
			if err := out.Encode(rec); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
}
