package adapters

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The frame guard. amqp091-go's reader refuses a content header frame that
// is larger than the connection's negotiated frame_max, or whose headers
// it will not parse (a table or array of more than 8192 entries, nesting
// deeper than 32, an unknown field type), by closing the whole connection.
// RabbitMQ accepts all of these from a publisher (one that negotiated a
// larger frame_max, before it was lowered, or that simply sent them), so
// watermill-amqp connected again, the message was delivered again, and
// the consumer looped on it forever: the queue was blocked for good.
//
// So every connection Antidote dials reads the server's frames through
// amqpFrameGuard. A content header frame the client would refuse is
// rewritten before the client sees it: the body size and the properties
// other than the headers are kept, and of the headers the small, readable
// entries that fit (the Watermill UUID among them); the entry
// amqpFrameGuardKey says why. TolerantAMQPMarshaler then hands the message
// on as undecodable: DeadLetter puts it in the DLQ with its body, and the
// queue moves on. Frames of every other kind pass as they are, in place;
// content header frames are checked from a buffer the guard reuses.

// amqpFrameGuardKey marks a rewritten content header, under a name no
// producer can know: a random part per process.
var amqpFrameGuardKey = func() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "antidote-frame-guard-" + hex.EncodeToString(b)
}()

// AMQP framing (0-9-1 section 4.2.3).
const (
	amqpFrameMethod = 1
	amqpFrameHeader = 2
	amqpFrameEnd    = 0xCE
	// amqpFrameHeaderSize is a frame's type, channel and size.
	amqpFrameHeaderSize = 7
	// amqpMaxDepth and amqpMaxElements are what amqp091-go's reader takes
	// (its maxFieldDepth and maxContainerElements).
	amqpMaxDepth    = 32
	amqpMaxElements = 8192
)

// Content header property flags, in wire order (amqp091-go's types.go).
const (
	amqpFlagContentType     = 0x8000
	amqpFlagContentEncoding = 0x4000
	amqpFlagHeaders         = 0x2000
	amqpFlagDeliveryMode    = 0x1000
	amqpFlagPriority        = 0x0800
	amqpFlagCorrelationID   = 0x0400
	amqpFlagReplyTo         = 0x0200
	amqpFlagExpiration      = 0x0100
	amqpFlagMessageID       = 0x0080
	amqpFlagTimestamp       = 0x0040
	amqpFlagType            = 0x0020
	amqpFlagUserID          = 0x0010
	amqpFlagAppID           = 0x0008
	amqpFlagReserved1       = 0x0004
)

// What a rewritten header keeps of the original headers: entries of at most
// amqpGuardKeptEntry bytes, up to amqpGuardKept bytes (less on a small
// frame_max) and amqpGuardKeptEntries entries.
const (
	amqpGuardKeptEntry   = 1024
	amqpGuardKept        = 32 << 10
	amqpGuardKeptEntries = 1024
	amqpGuardWhyBytes    = 512
)

// amqpFrameGuard reads the server's side of an AMQP connection for the
// client, rewriting the content header frames the client would refuse
// (see above). Writes pass as they are; the first frames are read to learn
// the frame_max the client settled on (its connection.tune-ok).
type amqpFrameGuard struct {
	net.Conn
	r *bufio.Reader

	// limit is the negotiated frame_max (0: none), from the client's
	// tune-ok, which it writes before any delivery can come.
	limit atomic.Uint32

	// Read side: the reader's goroutine only.
	out  []byte // ready for the client
	pass int64  // bytes of the current frame to hand on as they are
	raw  bool   // not frames (the server refused the protocol): as it is
	hdr  [amqpFrameHeaderSize]byte
	buf  []byte // a content header frame, reused

	// Write side, until the tune-ok is seen: the writer's goroutine only.
	wdone bool
	wbuf  []byte
}

func newAMQPFrameGuard(c net.Conn) *amqpFrameGuard {
	return &amqpFrameGuard{Conn: c, r: bufio.NewReaderSize(c, 64<<10)}
}

func (g *amqpFrameGuard) Write(p []byte) (int, error) {
	if !g.wdone {
		g.scanWrite(p)
	}
	return g.Conn.Write(p)
}

// scanWrite follows the client's first frames, after its 8-byte protocol
// header, to its connection.tune-ok: the frame_max it will enforce.
func (g *amqpFrameGuard) scanWrite(p []byte) {
	g.wbuf = append(g.wbuf, p...)
	if len(g.wbuf) < 8 {
		return
	}
	frames := g.wbuf[8:]
	for len(frames) >= amqpFrameHeaderSize {
		size := binary.BigEndian.Uint32(frames[3:7])
		end := amqpFrameHeaderSize + int(size) + 1
		if size > 1<<16 || len(frames) < end {
			break
		}
		payload := frames[amqpFrameHeaderSize : end-1]
		// connection.tune-ok: class 10, method 31, channel-max, frame-max.
		if frames[0] == amqpFrameMethod && len(payload) >= 10 &&
			binary.BigEndian.Uint16(payload[0:2]) == 10 && binary.BigEndian.Uint16(payload[2:4]) == 31 {
			g.limit.Store(binary.BigEndian.Uint32(payload[6:10]))
			g.wdone, g.wbuf = true, nil
			return
		}
		frames = frames[end:]
	}
	if len(g.wbuf) > 64<<10 { // not a client we know: nothing to learn
		g.wdone, g.wbuf = true, nil
	}
}

func (g *amqpFrameGuard) Read(p []byte) (int, error) {
	for {
		if len(g.out) > 0 {
			n := copy(p, g.out)
			g.out = g.out[n:]
			return n, nil
		}
		if g.raw || g.pass > 0 {
			q := p
			if !g.raw && int64(len(q)) > g.pass {
				q = q[:g.pass]
			}
			n, err := g.r.Read(q)
			g.pass -= int64(n)
			return n, err
		}
		if err := g.nextFrame(); err != nil {
			return 0, err
		}
	}
}

// nextFrame reads the next frame's header and decides: hand it on as it
// is, or, for a content header, check it first.
func (g *amqpFrameGuard) nextFrame() error {
	h, err := g.r.Peek(amqpFrameHeaderSize)
	if err != nil {
		if len(h) > 0 {
			g.raw = true // the rest, and the error, as they are
			return nil
		}
		return err
	}
	if h[0] != amqpFrameHeader {
		if h[0] == 'A' { // "AMQP": the server refused our protocol version
			g.raw = true
			return nil
		}
		copy(g.hdr[:], h)
		_, _ = g.r.Discard(amqpFrameHeaderSize)
		g.out = g.hdr[:]
		g.pass = int64(binary.BigEndian.Uint32(h[3:7])) + 1
		return nil
	}
	size := binary.BigEndian.Uint32(h[3:7])
	channel := binary.BigEndian.Uint16(h[1:3])
	if limit := g.limit.Load(); limit > 0 && int64(size) > int64(limit)-8 {
		_, _ = g.r.Discard(amqpFrameHeaderSize)
		why := fmt.Sprintf("its content header frame is %d bytes, over the connection's frame_max of %d (RabbitMQ took it from a publisher with a larger frame_max; frame_max was lowered since, or the publisher's was above the server's)", size+8, limit)
		frame, err := amqpRewriteHeader(g.r, int64(size), channel, limit, why)
		if err != nil {
			return err
		}
		end, err := g.r.ReadByte()
		if err != nil {
			return err
		}
		frame[len(frame)-1] = end
		g.out = frame
		return nil
	}
	total := amqpFrameHeaderSize + int(size) + 1
	if cap(g.buf) < total {
		g.buf = make([]byte, total)
	}
	frame := g.buf[:total]
	if _, err := io.ReadFull(g.r, frame); err != nil {
		return err
	}
	payload := frame[amqpFrameHeaderSize : total-1]
	problem := amqpCheckContentHeader(payload)
	if problem == nil {
		g.out = frame
		return nil
	}
	rewritten, err := amqpRewriteHeader(bytes.NewReader(payload), int64(len(payload)), channel, g.limit.Load(),
		"its headers cannot be read by this client: "+problem.Error())
	if err != nil {
		return err
	}
	rewritten[len(rewritten)-1] = frame[total-1]
	g.out = rewritten
	return nil
}

var errAMQPSyntax = errors.New("malformed")

// amqpScan reads AMQP field data from a byte slice; the first problem
// sticks.
type amqpScan struct {
	b   []byte
	err error
}

func (s *amqpScan) fail(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("%w: "+format, append([]any{errAMQPSyntax}, args...)...)
	}
}

func (s *amqpScan) take(n int) []byte {
	if s.err != nil {
		return nil
	}
	if n < 0 || n > len(s.b) {
		s.fail("truncated")
		return nil
	}
	v := s.b[:n]
	s.b = s.b[n:]
	return v
}

func (s *amqpScan) u8() byte {
	if v := s.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (s *amqpScan) u16() uint16 {
	if v := s.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (s *amqpScan) u32() uint32 {
	if v := s.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (s *amqpScan) shortstr() { s.take(int(s.u8())) }

// long reads a 4-byte length and that many bytes, refusing a length over
// math.MaxInt32 as amqp091-go does.
func (s *amqpScan) long() []byte {
	n := s.u32()
	if n > math.MaxInt32 {
		s.fail("a field of %d bytes", n)
		return nil
	}
	return s.take(int(n))
}

// amqpFieldFixed is the size of a field value of type typ that has a fixed
// size; -1 for the types with a length (S, A, F, x), -2 for a type
// amqp091-go does not know.
func amqpFieldFixed(typ byte) int {
	switch typ {
	case 'V':
		return 0
	case 't', 'b', 'B':
		return 1
	case 's', 'u':
		return 2
	case 'I', 'i', 'f':
		return 4
	case 'D':
		return 5
	case 'l', 'd', 'T':
		return 8
	case 'S', 'A', 'F', 'x':
		return -1
	}
	return -2
}

// checkField checks one field value of type typ as amqp091-go's reader
// reads it at depth (a table or array in it is one deeper).
func (s *amqpScan) checkField(typ byte, depth int) {
	switch n := amqpFieldFixed(typ); n {
	case -2:
		s.fail("field type %q unknown", typ)
	case -1:
		data := s.long()
		switch {
		case s.err != nil:
		case typ == 'F':
			s.checkTable(data, depth+1)
		case typ == 'A':
			s.checkArray(data, depth+1)
		}
	default:
		s.take(n)
	}
}

// checkTable checks a table's entries (data: without its length) at depth.
func (s *amqpScan) checkTable(data []byte, depth int) {
	if depth > amqpMaxDepth {
		s.fail("tables or arrays nested over %d deep", amqpMaxDepth)
		return
	}
	in := amqpScan{b: data}
	for n := 1; len(in.b) > 0 && in.err == nil; n++ {
		if n > amqpMaxElements {
			// amqp091-go counts distinct names; more entries than that
			// are refused here whatever their names.
			in.fail("a table of over %d entries", amqpMaxElements)
			break
		}
		in.shortstr()
		in.checkField(in.u8(), depth)
	}
	if in.err != nil && s.err == nil {
		s.err = in.err
	}
}

// checkArray checks an array's elements (data: without its length) at depth.
func (s *amqpScan) checkArray(data []byte, depth int) {
	if depth > amqpMaxDepth {
		s.fail("tables or arrays nested over %d deep", amqpMaxDepth)
		return
	}
	in := amqpScan{b: data}
	for n := 1; len(in.b) > 0 && in.err == nil; n++ {
		if n > amqpMaxElements {
			in.fail("an array of over %d elements", amqpMaxElements)
			break
		}
		in.checkField(in.u8(), depth)
	}
	if in.err != nil && s.err == nil {
		s.err = in.err
	}
}

// amqpCheckContentHeader reports why amqp091-go's reader would refuse the
// content header payload p (without the frame's header and end), or nil.
func amqpCheckContentHeader(p []byte) error {
	s := amqpScan{b: p}
	s.take(12) // class, weight, body size
	flags := s.u16()
	for _, f := range amqpProperties {
		if flags&f.flag == 0 {
			continue
		}
		switch {
		case f.flag == amqpFlagHeaders:
			data := s.long()
			if s.err == nil {
				s.checkTable(data, 0)
			}
		case f.size < 0:
			s.shortstr()
		default:
			s.take(f.size)
		}
	}
	return s.err
}

// amqpProperties are the basic class's properties in wire order: size -1
// is a shortstr, the headers table is read apart.
var amqpProperties = []struct {
	flag uint16
	size int
}{
	{amqpFlagContentType, -1}, {amqpFlagContentEncoding, -1}, {amqpFlagHeaders, 0},
	{amqpFlagDeliveryMode, 1}, {amqpFlagPriority, 1}, {amqpFlagCorrelationID, -1},
	{amqpFlagReplyTo, -1}, {amqpFlagExpiration, -1}, {amqpFlagMessageID, -1},
	{amqpFlagTimestamp, 8}, {amqpFlagType, -1}, {amqpFlagUserID, -1}, {amqpFlagAppID, -1},
	{amqpFlagReserved1, -1},
}

// amqpStream reads the payload of a content header frame from r, as it
// comes (a frame over frame_max is never held whole).
type amqpStream struct {
	r   *io.LimitedReader
	err error
}

func (s *amqpStream) read(n int) []byte {
	if s.err != nil {
		return nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(s.r, b); err != nil {
		s.err = err
		return nil
	}
	return b
}

func (s *amqpStream) skip(n int64) {
	if s.err != nil {
		return
	}
	if _, err := io.CopyN(io.Discard, s.r, n); err != nil {
		s.err = err
	}
}

// shortstr returns a shortstr with its length byte.
func (s *amqpStream) shortstr() []byte {
	l := s.read(1)
	if l == nil {
		return nil
	}
	return append(l, s.read(int(l[0]))...)
}

// amqpRewriteHeader reads a content header payload of size bytes from r
// (all of it) and returns the frame for channel that replaces it: the same
// body size and properties, but of the headers only the readable entries
// that fit (each at most amqpGuardKeptEntry bytes; the Watermill UUID
// first), plus amqpFrameGuardKey saying why. limit is the frame_max the
// frame must fit (0: none). The frame's last byte is the end octet
// 0xCE; the caller puts the original's there.
func amqpRewriteHeader(r io.Reader, size int64, channel uint16, limit uint32, why string) ([]byte, error) {
	in := &amqpStream{r: &io.LimitedReader{R: r, N: size}}
	fixed := in.read(14)
	if in.err != nil {
		return nil, fmt.Errorf("amqp: a content header frame of %d bytes that is not one: %w", size, in.err)
	}
	flags := binary.BigEndian.Uint16(fixed[12:14])
	var pre, post, kept []byte
	keptFlags := flags &^ (amqpFlagContentType | amqpFlagContentEncoding | amqpFlagHeaders)
	budget := amqpGuardKept
	if limit > 0 {
		budget = min(budget, (int(limit)-8)/4)
	}
	total, keptN, dropped, droppedBytes := 0, 0, 0, int64(0)
	var droppedNames []string
	drop := func(name string, n int64) {
		dropped++
		droppedBytes += n
		if len(droppedNames) < 5 {
			droppedNames = append(droppedNames, strings.ToValidUTF8(name, "?"))
		}
	}
	for _, f := range amqpProperties {
		if flags&f.flag == 0 {
			continue
		}
		if f.flag == amqpFlagHeaders {
			l := in.read(4)
			if in.err != nil {
				break
			}
			table := &amqpStream{r: &io.LimitedReader{R: in.r, N: int64(binary.BigEndian.Uint32(l))}}
			for table.r.N > 0 && table.err == nil {
				key := table.shortstr()
				typ := table.read(1)
				if table.err != nil {
					break
				}
				total++
				name := string(key[1:])
				entry := append(key, typ...)
				keep := true
				switch n := amqpFieldFixed(typ[0]); n {
				case -2: // the entries after it cannot be told apart
					drop(name, table.r.N)
					table.skip(table.r.N)
					keep = false
				case -1:
					lb := table.read(4)
					if table.err != nil {
						break
					}
					vn := int64(binary.BigEndian.Uint32(lb))
					if int64(len(entry))+4+vn > amqpGuardKeptEntry {
						drop(name, int64(len(entry))+4+vn)
						table.skip(vn)
						keep = false
						break
					}
					data := table.read(int(vn))
					entry = append(append(entry, lb...), data...)
					check := amqpScan{}
					if typ[0] == 'F' {
						check.checkTable(data, 1)
					} else if typ[0] == 'A' {
						check.checkArray(data, 1)
					}
					if check.err != nil {
						drop(name, int64(len(entry)))
						keep = false
					}
				default:
					entry = append(entry, table.read(n)...)
				}
				if table.err != nil || !keep {
					continue
				}
				uuid := name == amqpUUIDHeader
				if !uuid && (keptN >= amqpGuardKeptEntries || len(kept)+len(entry) > budget || name == amqpFrameGuardKey) {
					drop(name, int64(len(entry)))
					continue
				}
				keptN++
				kept = append(kept, entry...)
			}
			in.skip(table.r.N) // what a broken entry left of the table
			continue
		}
		var v []byte
		if f.size < 0 {
			v = in.shortstr()
		} else {
			v = in.read(f.size)
		}
		if in.err != nil {
			break
		}
		if f.flag == amqpFlagContentType || f.flag == amqpFlagContentEncoding {
			pre = append(pre, v...)
			keptFlags |= f.flag
		} else {
			post = append(post, v...)
		}
	}
	if in.err != nil {
		// Truncated after the headers: what was read of the properties is
		// kept, the others are not set.
		keptFlags = amqpKeptFlags(flags, pre, post)
	}
	in.err = nil
	in.skip(in.r.N) // padding, or what a broken property left
	if in.err != nil {
		return nil, fmt.Errorf("amqp: reading a content header frame of %d bytes: %w", size, in.err)
	}

	summary := fmt.Sprintf("%s; kept %d of its %d headers, dropped %d (%d bytes)", why, keptN, total, dropped, droppedBytes)
	if len(droppedNames) > 0 {
		summary += ": " + strings.Join(droppedNames, ", ")
		if dropped > len(droppedNames) {
			summary += ", ..."
		}
	}
	if len(summary) > amqpGuardWhyBytes {
		summary = strings.ToValidUTF8(summary[:amqpGuardWhyBytes], "") + "..."
	}
	build := func(kept, pre, post []byte, flags uint16) []byte {
		marker := append([]byte{byte(len(amqpFrameGuardKey))}, amqpFrameGuardKey...)
		marker = append(marker, 'S')
		marker = binary.BigEndian.AppendUint32(marker, uint32(len(summary)))
		marker = append(marker, summary...)
		payload := append([]byte(nil), fixed[:12]...)
		payload = binary.BigEndian.AppendUint16(payload, flags|amqpFlagHeaders)
		payload = append(payload, pre...)
		payload = binary.BigEndian.AppendUint32(payload, uint32(len(kept)+len(marker)))
		payload = append(append(payload, kept...), marker...)
		payload = append(payload, post...)
		frame := []byte{amqpFrameHeader, byte(channel >> 8), byte(channel)}
		frame = binary.BigEndian.AppendUint32(frame, uint32(len(payload)))
		return append(append(frame, payload...), amqpFrameEnd)
	}
	frame := build(kept, pre, post, keptFlags)
	if limit > 0 && len(frame) > int(limit) {
		frame = build(nil, pre, post, keptFlags)
	}
	if limit > 0 && len(frame) > int(limit) {
		frame = build(nil, nil, nil, 0)
	}
	return frame, nil
}

// amqpUUIDHeader is watermill-amqp's UUID header: kept first.
const amqpUUIDHeader = "_watermill_message_uuid"

// amqpKeptFlags are the flags of the properties pre and post hold, read in
// order from flags until they ran out.
func amqpKeptFlags(flags uint16, pre, post []byte) uint16 {
	var out uint16
	if flags&amqpFlagContentType != 0 && len(pre) > 0 {
		out |= amqpFlagContentType
		pre = pre[1+int(pre[0]):]
	}
	if flags&amqpFlagContentEncoding != 0 && len(pre) > 0 {
		out |= amqpFlagContentEncoding
	}
	s := amqpScan{b: post}
	for _, f := range amqpProperties[3:] {
		if flags&f.flag == 0 || len(s.b) == 0 {
			continue
		}
		if f.size < 0 {
			s.shortstr()
		} else {
			s.take(f.size)
		}
		if s.err != nil {
			break
		}
		out |= f.flag
	}
	return out
}

// amqpDial dials addr within timeout (as amqp.DefaultDial does: the
// deadline covers the handshakes; amqp091-go clears it once connected)
// and reads the connection through the frame guard. With tlsConfig the
// TLS handshake is the dial's own, so that the guard reads the AMQP
// stream, not TLS records: it happens when the client first writes,
// unless the client starts TLS itself (it was given an amqps:// URL), in
// which case the connection is handed over as it is, unguarded.
func amqpDial(timeout time.Duration, tlsConfig *tls.Config) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		conn, err := net.DialTimeout(network, addr, timeout)
		if err != nil {
			return nil, err
		}
		if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			_ = conn.Close()
			return nil, err
		}
		if tlsConfig == nil {
			return newAMQPFrameGuard(conn), nil
		}
		return &amqpTLSConn{Conn: conn, config: tlsConfig, ready: make(chan struct{})}, nil
	}
}

// amqpTLSConn starts TLS at the client's first write (see amqpDial). Its
// deadlines are the TCP connection's, as a tls.Conn's are.
type amqpTLSConn struct {
	net.Conn // TCP
	config   *tls.Config
	once     sync.Once
	ready    chan struct{} // closed once the client's first write decided
	conn     net.Conn      // then: the guarded TLS connection, or TCP
	err      error
}

func (c *amqpTLSConn) start(p []byte) {
	c.once.Do(func() {
		defer close(c.ready)
		if len(p) > 0 && p[0] == 0x16 { // a TLS handshake record: the client's own TLS
			c.conn = c.Conn
			return
		}
		tc := tls.Client(c.Conn, c.config)
		if err := tc.Handshake(); err != nil {
			c.err = err
			return
		}
		c.conn = newAMQPFrameGuard(tc)
	})
}

func (c *amqpTLSConn) Write(p []byte) (int, error) {
	c.start(p)
	if c.err != nil {
		return 0, c.err
	}
	return c.conn.Write(p)
}

func (c *amqpTLSConn) Read(p []byte) (int, error) {
	<-c.ready
	if c.err != nil {
		return 0, c.err
	}
	return c.conn.Read(p)
}

// Close closes the TCP connection (and so the TLS one), and lets a Read
// waiting for the first write go.
func (c *amqpTLSConn) Close() error {
	c.once.Do(func() {
		c.err = net.ErrClosed
		close(c.ready)
	})
	return c.Conn.Close()
}
