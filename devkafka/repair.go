package devkafka

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kfake"
)

// A data directory written by a devkafka before auto-created topics were
// saved (see autoCreate) can hold what kfake does not load or loads wrong:
//
//   - an orphan: a partition directory of a topic topics.json does not
//     list (auto-created, then the broker was killed). kfake never reads
//     it, and a topic of that name created later appends to its segment as
//     if it were empty. repairDataDir lists them for adoptOrphans.
//   - a restarted log: a segment whose batches start again from offset 0
//     partway (the later topic's records appended to the orphan's). kfake
//     would index the same offsets twice. repairDataDir renumbers them,
//     in the order they were appended, after the records before them.
//
// This reads kfake's layout (partitions/<url-escaped topic>-<partition>/
// <base offset>.dat holding Kafka RecordBatches back to back, topics.json),
// which kfake versions (persist.go: currentPersistVersion) and keeps.

// repairDataDir renumbers restarted logs in dir and returns the orphans:
// per topic, the partition count that covers its directories.
func repairDataDir(dir string) (map[string]int32, error) {
	listed, err := listedTopics(dir)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(dir, "partitions"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("devkafka: data directory %s: %w", dir, err)
	}
	orphans := map[string]int32{}
	for _, e := range entries {
		topic, part, ok := parsePartDir(e.Name())
		if !e.IsDir() || !ok {
			continue // not kfake's; kfake skips it too
		}
		pdir := filepath.Join(dir, "partitions", e.Name())
		segs, err := segmentFiles(pdir)
		if err != nil {
			return nil, fmt.Errorf("devkafka: data directory %s: %w", dir, err)
		}
		if len(segs) == 0 {
			continue
		}
		if err := renumber(pdir, segs); err != nil {
			return nil, fmt.Errorf("devkafka: data directory %s: %w", dir, err)
		}
		if _, ok := listed[topic]; !ok {
			orphans[topic] = max(orphans[topic], part+1)
		}
	}
	return orphans, nil
}

// listedTopics reads the names of the topics topics.json lists.
func listedTopics(dir string) (map[string]struct{}, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "topics.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]struct{}{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("devkafka: data directory %s: %w", dir, err)
	}
	var file struct {
		Topics []struct {
			Name string `json:"name"`
		} `json:"topics"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		return nil, fmt.Errorf("devkafka: data directory %s: topics.json is damaged (%v); move the directory away to start empty", dir, err)
	}
	listed := make(map[string]struct{}, len(file.Topics))
	for _, t := range file.Topics {
		listed[t.Name] = struct{}{}
	}
	return listed, nil
}

// parsePartDir splits kfake's "<url-escaped topic>-<partition>".
func parsePartDir(name string) (string, int32, bool) {
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return "", 0, false
	}
	part, err := strconv.ParseInt(name[i+1:], 10, 32)
	if err != nil || part < 0 {
		return "", 0, false
	}
	topic, err := url.PathUnescape(name[:i])
	if err != nil {
		return "", 0, false
	}
	return topic, int32(part), true
}

// segmentFiles lists the base offsets of pdir's segments, in order.
func segmentFiles(pdir string) ([]int64, error) {
	entries, err := os.ReadDir(pdir)
	if err != nil {
		return nil, err
	}
	var bases []int64
	for _, e := range entries {
		if base, ok := strings.CutSuffix(e.Name(), ".dat"); ok {
			if n, err := strconv.ParseInt(base, 10, 64); err == nil {
				bases = append(bases, n)
			}
		}
	}
	slices.Sort(bases)
	return bases, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// batchHeader is the size of a RecordBatch's fixed header, up to and
// including its record count; the CRC-32C at offset 17 covers everything
// from the attributes at offset 21 on, not the base offset.
const batchHeader = 61

// renumber gives the batches of a restarted log the offsets after the
// ones before them. It rewrites only base offsets, which the batch CRC
// does not cover, and removes the partition's snapshot.json so that kfake
// rebuilds the partition from its segments. Batches after a torn or
// damaged one are left for kfake, which truncates them.
func renumber(pdir string, segs []int64) error {
	var fixes []int64 // positions of base offsets to rewrite, in the first segment
	var bases []int64 // their new base offsets
	next := int64(-1)
	for i, base := range segs {
		path := filepath.Join(pdir, strconv.FormatInt(base, 10)+".dat")
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for pos := 0; pos+batchHeader <= len(raw); {
			length := int(int32(binary.BigEndian.Uint32(raw[pos+8:])))
			end := pos + 12 + length
			if length < batchHeader-12 || end > len(raw) || binary.BigEndian.Uint32(raw[pos+17:]) != crc32.Checksum(raw[pos+21:end], castagnoli) {
				break
			}
			first := int64(binary.BigEndian.Uint64(raw[pos:]))
			last := int64(int32(binary.BigEndian.Uint32(raw[pos+23:])))
			switch {
			case next < 0 || first >= next: // in order; gaps are compaction's
				next = first + last + 1
			case i > 0 || len(segs) > 1:
				return fmt.Errorf("partition directory %s holds a log whose offsets start again at %d after %d, across %d segments (left by a devkafka before auto-created topics were saved); devkafka renumbers only a one-segment log: move the directory away to start without it", pdir, first, next, len(segs))
			default:
				fixes = append(fixes, int64(pos))
				bases = append(bases, next)
				next += last + 1
			}
			pos = end
		}
	}
	if len(fixes) == 0 {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(pdir, strconv.FormatInt(segs[0], 10)+".dat"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	for i, pos := range fixes {
		if _, err := f.WriteAt(binary.BigEndian.AppendUint64(nil, uint64(bases[i])), pos); err != nil {
			_ = f.Close()
			return err
		}
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(pdir, "snapshot.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// adoptOrphans has kfake list the orphan topics, with a private broker on
// dir that creates them through CreateTopic (which saves topics.json) and
// is closed again: the broker Start then runs loads their records like any
// listed topic's. Close saves an empty snapshot.json for each adopted
// partition, which kfake sees does not match the segments on disk and
// ignores; it is removed anyway, so that kfake rebuilds from the segments.
func adoptOrphans(dir string, orphans map[string]int32, brokers, partitions int) error {
	c, err := kfake.NewCluster(kfake.DataDir(dir), kfake.NumBrokers(brokers), kfake.DefaultNumPartitions(partitions))
	if err != nil {
		return err
	}
	for topic, n := range orphans {
		if err := c.CreateTopic(topic, max(n, int32(partitions)), nil); err != nil {
			c.Close()
			return fmt.Errorf("adopt topic %q found on disk: %w", topic, err)
		}
	}
	c.Close()
	for topic, n := range orphans {
		for p := range max(n, int32(partitions)) {
			pdir := filepath.Join(dir, "partitions", url.PathEscape(topic)+"-"+strconv.Itoa(int(p)))
			if err := os.Remove(filepath.Join(pdir, "snapshot.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}
