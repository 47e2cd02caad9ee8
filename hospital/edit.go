package hospital

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
)

// MetadataReplayOf is the metadata key of an edited replay naming the UUID
// of the letter it was edited from.
const MetadataReplayOf = "antidote.replay_of"

// Edit is a corrected letter: its new payload and metadata, each whole.
type Edit struct {
	// Payload replaces the letter's. If Payload is nil, the letter's is
	// kept.
	Payload []byte
	// Metadata replaces the letter's original metadata (the envelope keys
	// are dropped from the replay either way). If Metadata is nil, the
	// letter's is kept.
	Metadata map[string]string
}

// EditAndReplay sends letter id, corrected by e, to its original topic as
// a new message (a new UUID: the consumer's idempotency must not skip it
// as the original) that names the original under MetadataReplayOf, and
// marks the letter replayed; the audit entry records who, when and the
// difference (Diff). An edit that changes nothing is refused: replay the
// letter as it is instead.
func EditAndReplay(ctx context.Context, cfg TreatConfig, id int64, e Edit) (newUUID string, err error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return "", err
	}
	if cfg.Publisher == nil {
		return "", errors.New("hospital: TreatConfig.Publisher is nil; EditAndReplay needs the broker's publisher")
	}
	l, err := cfg.Store.Letter(ctx, id)
	if err != nil {
		return "", err
	}
	payload, md := e.Payload, e.Metadata
	if payload == nil {
		payload = l.Payload
	}
	if md == nil {
		md = l.Metadata
	}
	diff := Diff(l.Payload, l.Metadata, payload, md)
	if diff == "" {
		return "", fmt.Errorf("hospital: edit of letter %d changes nothing; replay it as it is", id)
	}
	newUUID = watermill.NewUUID()
	err = cfg.Store.Treat(ctx, id, StateReplayed, cfg.Actor, "edited and replayed as "+newUUID+":\n"+diff, func(l Letter) error {
		if l.OriginalTopic == "" {
			return fmt.Errorf("it names no original topic (%s): nowhere to replay it", poison.KeyOriginalTopic)
		}
		m := message.NewMessage(l.UUID, payload)
		for k, v := range md {
			m.Metadata.Set(k, v)
		}
		out := poison.Replay(m, cfg.Now())
		out.UUID = newUUID
		out.Metadata.Set(MetadataReplayOf, l.UUID)
		return cfg.Publisher.Publish(l.OriginalTopic, out)
	})
	if err != nil {
		return "", err
	}
	return newUUID, nil
}

// Diff describes how payload and metadata changed, one line per change
// ("~ payload.items[0].qty: 1 -> 2", "+ metadata.key: v", "- ..."): JSON
// payloads by key path, other payloads by size; "" when nothing changed.
func Diff(oldPayload []byte, oldMD map[string]string, newPayload []byte, newMD map[string]string) string {
	var lines []string
	if !bytes.Equal(oldPayload, newPayload) {
		a, aok := flatJSON(oldPayload)
		b, bok := flatJSON(newPayload)
		if aok && bok {
			lines = append(lines, diffMaps("payload", a, b)...)
		}
		if len(lines) == 0 { // not JSON, or only formatting changed
			lines = append(lines, fmt.Sprintf("~ payload: %d bytes -> %d bytes", len(oldPayload), len(newPayload)))
		}
	}
	lines = append(lines, diffMaps("metadata", oldMD, newMD)...)
	return strings.Join(lines, "\n")
}

func diffMaps(prefix string, a, b map[string]string) []string {
	var out []string
	keys := slices.Sorted(maps.Keys(a))
	for _, k := range keys {
		nv, ok := b[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("- %s.%s: %s", prefix, k, a[k]))
		case nv != a[k]:
			out = append(out, fmt.Sprintf("~ %s.%s: %s -> %s", prefix, k, a[k], nv))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(b)) {
		if _, ok := a[k]; !ok {
			out = append(out, fmt.Sprintf("+ %s.%s: %s", prefix, k, b[k]))
		}
	}
	return out
}

// flatJSON maps each leaf of a JSON document to its JSON text.
func flatJSON(data []byte) (map[string]string, bool) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	out := map[string]string{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if len(x) == 0 {
				out[path] = "{}"
			}
			for k, c := range x {
				walk(join(path, k), c)
			}
		case []any:
			if len(x) == 0 {
				out[path] = "[]"
			}
			for i, c := range x {
				walk(fmt.Sprintf("%s[%d]", path, i), c)
			}
		default:
			b, _ := json.Marshal(x)
			out[path] = string(b)
		}
	}
	walk("", v)
	return out, true
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
