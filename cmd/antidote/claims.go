package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/redisstore"
)

// The claim-check store: where the services' DeadLetter keeps the payload
// and metadata of a letter too large for its DLQ. Every command that reads
// letters (antidote dlq, antidote hospital ingest and serve) takes it the
// same way, from --claim-check, else ANTIDOTE_CLAIM_CHECK, else
// claim_check.store in --config, and finds it where the services' own
// stores are: PostgreSQL at postgres.url (ANTIDOTE_POSTGRES_URL), Redis at
// ANTIDOTE_REDIS_ADDR.
const (
	envClaimCheck = "ANTIDOTE_CLAIM_CHECK"
	envRedisAddr  = "ANTIDOTE_REDIS_ADDR"
	// defaultRedisAddr is where the services' Redis stores are when
	// ANTIDOTE_REDIS_ADDR is unset.
	defaultRedisAddr = "127.0.0.1:6379"
)

// claimCheckStores are the values of --claim-check.
var claimCheckStores = []string{"postgres", "redis"}

// claimCheckUsage is --claim-check's help, the same on every command.
const claimCheckUsage = "where the services keep payloads too large for the DLQ, read back so letters are whole: postgres (at postgres.url, ANTIDOTE_POSTGRES_URL) or redis (at ANTIDOTE_REDIS_ADDR); default " +
	envClaimCheck + ", or claim_check.store in --config"

// claimCheckConfig is the claim_check section of --config, with the
// environment and --claim-check over it.
type claimCheckConfig struct {
	// Store is postgres or redis. If Store is empty, no claim-check store:
	// a claim-checked letter is read without its payload, the claim named.
	Store string `yaml:"store"`
	// Table is the PostgreSQL table the services' store uses
	// (pgstore.ClaimCheckStoreConfig.Table). If Table is empty,
	// antidote_claim_checks.
	Table string `yaml:"table"`
	// Prefix is the Redis key prefix the services' store uses
	// (redisstore.ClaimCheckStoreConfig.Prefix). If Prefix is empty,
	// antidote:claims:.
	Prefix string `yaml:"prefix"`

	// from names what set Store, for errors: --claim-check,
	// ANTIDOTE_CLAIM_CHECK, or claim_check.store in the file.
	from string
}

// splitClaimCheckYAML takes the top-level claim_check section out of a
// config file, as splitHospitalYAML does the hospital section: the
// adapters' strict parser never sees it, and keeps its line numbers.
func splitClaimCheckYAML(data []byte) ([]byte, claimCheckConfig, error) {
	var cc claimCheckConfig
	rest, line, err := cutSection(data, "claim_check", []string{"store", "table", "prefix"}, &cc)
	if line > 0 {
		cc.from = fmt.Sprintf("line %d: claim_check.store", line)
	}
	return rest, cc, err
}

// cutSection takes the top-level section name out of a config file,
// decoding it into out and refusing keys other than keys, and blanks its
// lines (so errors in the rest keep their line numbers). It returns the
// rest and the section's line, 0 when the file has none.
func cutSection(data []byte, name string, keys []string, out any) ([]byte, int, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil || len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return data, 0, nil // the adapters' parser reports it
	}
	top := root.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		if k.Value != name {
			continue
		}
		if err := v.Decode(out); err != nil {
			return nil, k.Line, fmt.Errorf("line %d: %s: %v", k.Line, name, err)
		}
		if v.Kind == yaml.MappingNode {
			for j := 0; j+1 < len(v.Content); j += 2 {
				if !slices.Contains(keys, v.Content[j].Value) {
					return nil, k.Line, fmt.Errorf("line %d: unknown key %s.%s; the %s section has only %s", v.Content[j].Line, name, v.Content[j].Value, name, strings.Join(keys, ", "))
				}
			}
		}
		lines := strings.SplitAfter(string(data), "\n")
		end := len(lines) // up to the next top-level key
		if i+2 < len(top.Content) {
			end = top.Content[i+2].Line - 1
		}
		for l := k.Line - 1; l < end && l < len(lines); l++ {
			if strings.HasSuffix(lines[l], "\n") {
				lines[l] = "\n"
			} else {
				lines[l] = ""
			}
		}
		return []byte(strings.Join(lines, "")), k.Line, nil
	}
	return data, 0, nil
}

// resolve puts the environment and the flag over the file's section and
// checks the result; a bad value is bad usage naming where it came from.
func (c *claimCheckConfig) resolve(file, flag string) error {
	if c.from != "" {
		c.from = file + ": " + c.from
	}
	if v := os.Getenv(envClaimCheck); v != "" {
		c.Store, c.from = v, envClaimCheck
	}
	if flag != "" {
		c.Store, c.from = flag, "--claim-check"
	}
	if c.Store != "" && !slices.Contains(claimCheckStores, c.Store) {
		return usagef("%s %q: use one of: %s", c.from, c.Store, strings.Join(claimCheckStores, ", "))
	}
	// A table or prefix for a store that is not used is a mistake, not a
	// setting to ignore quietly.
	if c.Table != "" && c.Store != "postgres" {
		return usagef("%s: claim_check.table is for the postgres store, and the claim-check store is %s", file, c.name())
	}
	if c.Prefix != "" && c.Store != "redis" {
		return usagef("%s: claim_check.prefix is for the redis store, and the claim-check store is %s", file, c.name())
	}
	if c.Store == "postgres" {
		if err := (pgstore.ClaimCheckStoreConfig{URL: "set", Table: c.Table}).Validate(); err != nil {
			return usagef("%s: claim_check.table: %v", file, err)
		}
	}
	return nil
}

// open opens the claim-check store c names (nil, and a no-op close,
// when none). A store that does not answer is exit code 4.
func (c claimCheckConfig) open(ctx context.Context, cfg adapters.Config) (poison.ClaimCheck, func() error, error) {
	timeout := cfg.ConnectTimeout
	if timeout <= 0 {
		timeout = adapters.DefaultConnectTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch c.Store {
	case "postgres":
		url := cfg.Postgres.URL
		if url == "" {
			url = adapters.DefaultPostgresURL
		}
		st, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{URL: url, Table: c.Table})
		if err != nil {
			return nil, nil, unreachableClaims(fmt.Errorf("claim-check store postgres at %s: %w", adapters.Redact(url), err))
		}
		return st, st.Close, nil
	case "redis":
		addr := os.Getenv(envRedisAddr)
		if addr == "" {
			addr = defaultRedisAddr
		}
		st, err := redisstore.NewClaimCheckStore(redisstore.ClaimCheckStoreConfig{Addr: addr, Prefix: c.Prefix})
		if err != nil {
			return nil, nil, usagef("claim-check store redis at %s: %v", addr, err)
		}
		// The client connects lazily: ask now, so an unreachable store is
		// said at start, not as a problem on every letter.
		if _, err := st.Get(ctx, "antidote-cli-probe"); !errors.Is(err, poison.ErrClaimNotFound) {
			_ = st.Close()
			return nil, nil, unreachableClaims(fmt.Errorf("claim-check store redis at %s (%s): %w", addr, envRedisAddr, err))
		}
		return st, st.Close, nil
	default:
		return nil, func() error { return nil }, nil
	}
}

// unreachableClaims is exit code 4, as a broker that does not answer.
func unreachableClaims(err error) error {
	return &codedError{code: exitUnreachable, err: err}
}

// name is the store's name in messages.
func (c claimCheckConfig) name() string {
	if c.Store == "" {
		return "none (set claim_check.store, " + envClaimCheck + " or --claim-check)"
	}
	return c.Store
}
