package pgstore

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// sweeper deletes expired rows of a table in the background of a store's
// own calls, with no timer of its own: Maybe starts at most one pass per
// interval, in a goroutine that Close cancels and waits for, so nothing
// outlives the store.
type sweeper struct {
	pool     *pgxpool.Pool
	sql      string
	batch    int64
	interval time.Duration

	closed  atomic.Bool
	mu      sync.Mutex // orders wg.Add against Close
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
	last    atomic.Int64 // unix nanos of the last pass started
	running atomic.Bool
}

// newSweeper returns a sweeper for deleteSQL, a statement that deletes at
// most batch rows. A negative interval disables Maybe (DeleteExpired still
// works); an empty deleteSQL makes DeleteExpired delete nothing.
func newSweeper(pool *pgxpool.Pool, deleteSQL string, batch int64, interval time.Duration) *sweeper {
	s := &sweeper{pool: pool, sql: deleteSQL, batch: batch, interval: interval}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Closed reports whether Close was called.
func (s *sweeper) Closed() bool { return s.closed.Load() }

// DeleteExpired runs the statement until a pass deletes less than a batch,
// and returns how many rows it deleted.
func (s *sweeper) DeleteExpired(ctx context.Context) (int64, error) {
	if s.sql == "" {
		return 0, nil
	}
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, s.sql)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < s.batch {
			return total, nil
		}
	}
}

// Maybe starts a pass in the background when the last one started more than
// the interval ago and none is running.
func (s *sweeper) Maybe() {
	if s.interval < 0 || s.sql == "" {
		return
	}
	now := time.Now().UnixNano()
	if now-s.last.Load() < int64(s.interval) {
		return
	}
	if !s.running.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		s.running.Store(false)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	s.last.Store(now)
	go func() {
		defer s.wg.Done()
		defer s.running.Store(false)
		// Errors are dropped: the next pass retries, and DeleteExpired
		// reports them to callers who need to know.
		_, _ = s.DeleteExpired(s.ctx)
	}()
}

// Close cancels and waits for a running pass. It reports whether this call
// closed the sweeper (false when it was already closed).
func (s *sweeper) Close() bool {
	s.mu.Lock()
	already := s.closed.Swap(true)
	s.mu.Unlock()
	if already {
		return false
	}
	s.cancel()
	s.wg.Wait()
	return true
}
