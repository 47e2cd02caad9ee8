package redisstore

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// exampleAddr is the address the error messages suggest.
const exampleAddr = "127.0.0.1:6379"

// validateClient reports what is wrong with the server fields every config
// shares (Client/Addr). typ names the config in the messages.
func validateClient(typ string, client redis.UniversalClient, addr string) []error {
	switch {
	case client == nil && addr == "":
		return []error{fmt.Errorf("redisstore: %s needs a server: set Client to a go-redis client or Addr to \"host:port\" such as %s", typ, exampleAddr)}
	case client != nil && addr != "":
		return []error{fmt.Errorf("redisstore: %s has both Client and Addr set; set only one (Client to share an existing client, Addr to let the store open and close its own)", typ)}
	}
	return nil
}

// validateDuration reports a duration field that is negative or below the
// 1ms Redis can honour (PX); zero is valid (the default applies).
func validateDuration(field string, d, def time.Duration) error {
	if d < 0 || (d > 0 && d < time.Millisecond) {
		return fmt.Errorf("redisstore: %s is %s; set it to at least 1ms, or 0 for the default %s", field, d, def)
	}
	return nil
}

// conn is what every store shares: the client (its own or the caller's),
// the key prefix and the closed flag.
type conn struct {
	client     redis.UniversalClient
	ownsClient bool
	prefix     string
	isClosed   atomic.Bool
}

// newConn opens a client for addr when client is nil (lazily connected:
// the first call reports an unreachable server).
func newConn(client redis.UniversalClient, addr, prefix string) *conn {
	c := &conn{client: client, prefix: prefix}
	if c.client == nil {
		c.client, c.ownsClient = redis.NewClient(&redis.Options{Addr: addr}), true
	}
	return c
}

// key is k under the prefix.
func (c *conn) key(k string) string { return c.prefix + k }

// closed reports whether close was called.
func (c *conn) closed() bool { return c.isClosed.Load() }

// close closes the client if the store opened it. Idempotent.
func (c *conn) close() error {
	if c.isClosed.Swap(true) || !c.ownsClient {
		return nil
	}
	return c.client.Close()
}
