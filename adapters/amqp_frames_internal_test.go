package adapters

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
)

// A fake RabbitMQ on one end of a pipe, amqp091-go on the other: the
// server sends content header frames no real server would let a test
// publisher produce as easily (a frame over frame_max, unknown field
// types), byte for byte.

func amqpTestFrame(typ byte, channel uint16, payload []byte) []byte {
	f := []byte{typ, byte(channel >> 8), byte(channel)}
	f = binary.BigEndian.AppendUint32(f, uint32(len(payload)))
	return append(append(f, payload...), amqpFrameEnd)
}

func amqpTestMethod(class, method uint16, args ...[]byte) []byte {
	p := binary.BigEndian.AppendUint16(nil, class)
	p = binary.BigEndian.AppendUint16(p, method)
	return append(p, bytes.Join(args, nil)...)
}

func ss(s string) []byte { return append([]byte{byte(len(s))}, s...) }

func ls(b []byte) []byte { return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...) }

// entry is one table entry: name, type, encoded value.
func entry(name string, typ byte, value []byte) []byte {
	return append(append(ss(name), typ), value...)
}

func longstrEntry(name, v string) []byte { return entry(name, 'S', ls([]byte(v))) }

// nested is a table value n levels deep with a string at the bottom.
func nested(n int) []byte {
	v := entry("leaf", 'S', ls([]byte("x")))
	for range n {
		v = entry("d", 'F', ls(v))
	}
	return v
}

// contentHeader is a basic-class content header payload: body size, the
// headers table (entries), and a message-id and content type around it.
func contentHeader(bodySize int, entries ...[]byte) []byte {
	p := binary.BigEndian.AppendUint16(nil, 60)
	p = binary.BigEndian.AppendUint16(p, 0)
	p = binary.BigEndian.AppendUint64(p, uint64(bodySize))
	p = binary.BigEndian.AppendUint16(p, amqpFlagContentType|amqpFlagHeaders|amqpFlagMessageID)
	p = append(p, ss("application/json")...)
	p = append(p, ls(bytes.Join(entries, nil))...)
	return append(p, ss("msg-id-1")...)
}

// fakeRabbit serves one connection: the handshake with frameMax, one
// channel, one consumer, then the deliveries (content header payloads and
// bodies), then waits for the client to go.
func fakeRabbit(t *testing.T, conn net.Conn, frameMax uint32, headers [][]byte, bodies []string) {
	t.Helper()
	read := func() (byte, []byte) {
		h := make([]byte, 7)
		if _, err := io.ReadFull(conn, h); err != nil {
			return 0, nil
		}
		p := make([]byte, binary.BigEndian.Uint32(h[3:7])+1)
		if _, err := io.ReadFull(conn, p); err != nil {
			return 0, nil
		}
		return h[0], p[:len(p)-1]
	}
	send := func(b []byte) bool { _, err := conn.Write(b); return err == nil }
	go func() {
		defer conn.Close()
		if _, err := io.ReadFull(conn, make([]byte, 8)); err != nil {
			return
		}
		send(amqpTestFrame(amqpFrameMethod, 0, amqpTestMethod(10, 10, []byte{0, 9}, ls(nil), ls([]byte("PLAIN")), ls([]byte("en_US")))))
		read() // start-ok
		send(amqpTestFrame(amqpFrameMethod, 0, amqpTestMethod(10, 30,
			binary.BigEndian.AppendUint16(nil, 16), binary.BigEndian.AppendUint32(nil, frameMax), binary.BigEndian.AppendUint16(nil, 0))))
		read() // tune-ok
		read() // open
		send(amqpTestFrame(amqpFrameMethod, 0, amqpTestMethod(10, 41, ss(""))))
		read() // channel.open
		send(amqpTestFrame(amqpFrameMethod, 1, amqpTestMethod(20, 11, ls(nil))))
		_, consume := read() // basic.consume: class, method, reserved, queue, the client's consumer tag
		if len(consume) < 7 {
			return
		}
		q := 6 + 1 + int(consume[6])
		ctag := string(consume[q+1 : q+1+int(consume[q])])
		send(amqpTestFrame(amqpFrameMethod, 1, amqpTestMethod(60, 21, ss(ctag))))
		for i, h := range headers {
			tag := binary.BigEndian.AppendUint64(nil, uint64(i+1))
			if !send(amqpTestFrame(amqpFrameMethod, 1, amqpTestMethod(60, 60, ss(ctag), tag, []byte{0}, ss(""), ss("orders")))) ||
				!send(amqpTestFrame(amqpFrameHeader, 1, h)) ||
				!send(amqpTestFrame(3, 1, []byte(bodies[i]))) {
				return
			}
		}
		for { // until the client closes
			if typ, _ := read(); typ == 0 {
				return
			}
		}
	}()
}

// consumeFake dials the fake server (through the guard when guarded) and
// returns the deliveries it got before the connection ended or n arrived.
func consumeFake(t *testing.T, guarded bool, frameMax uint32, headers [][]byte, bodies []string) ([]amqp.Delivery, *amqp.Error) {
	t.Helper()
	server, client := net.Pipe()
	fakeRabbit(t, server, frameMax, headers, bodies)
	var c net.Conn = client
	if guarded {
		c = newAMQPFrameGuard(client)
	}
	conn, err := amqp.Open(c, amqp.Config{SASL: []amqp.Authentication{&amqp.PlainAuth{Username: "guest", Password: "guest"}}, FrameSize: amqp.FrameSizeUnlimited, Vhost: "/"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close() // the fake server does not answer connection.close
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume("orders", "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []amqp.Delivery
	timeout := time.After(20 * time.Second)
	for len(got) < len(headers) {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return got, <-closed
			}
			got = append(got, d)
		case e := <-closed:
			return got, e
		case <-timeout:
			t.Fatalf("%d of %d deliveries, and the connection still open", len(got), len(headers))
		}
	}
	return got, nil
}

func TestAMQPFrameGuard(t *testing.T) {
	many := func(n int) [][]byte {
		out := [][]byte{longstrEntry(amqpUUIDHeader, "uuid-many")}
		for i := range n - 1 {
			out = append(out, entry(fmt.Sprintf("k%05d", i), 'V', nil))
		}
		return out
	}
	longArray := func(n int) []byte {
		var els []byte
		for range n {
			els = append(els, 'V')
		}
		return ls(els)
	}
	big := strings.Repeat("h", 6000)
	cases := []struct {
		name     string
		frameMax uint32
		entries  [][]byte
		// refused: amqp091-go alone drops the connection on it
		refused bool
		keep    []string // headers the rewritten delivery keeps
		drop    []string
		why     string
	}{
		{name: "ordinary headers", frameMax: 131072, entries: [][]byte{longstrEntry(amqpUUIDHeader, "u1"), longstrEntry("k", "v"), entry("n", 'l', make([]byte, 8))}},
		{name: "8192 entries", frameMax: 131072, entries: many(8192)},
		{name: "tables nested 32 deep", frameMax: 131072, entries: [][]byte{longstrEntry(amqpUUIDHeader, "u1"), nested(32)}},
		{name: "8193 entries", frameMax: 131072, entries: many(8193), refused: true, keep: []string{amqpUUIDHeader, "k00000"}, why: "over 8192 entries"},
		{name: "tables nested 33 deep", frameMax: 131072, entries: [][]byte{longstrEntry(amqpUUIDHeader, "u1"), longstrEntry("small", "kept"), nested(33)},
			refused: true, keep: []string{amqpUUIDHeader, "small"}, drop: []string{"d"}, why: "nested over 32 deep"},
		{name: "an array of 8193 elements", frameMax: 131072, entries: [][]byte{longstrEntry(amqpUUIDHeader, "u1"), entry("arr", 'A', longArray(8193)), longstrEntry("after", "kept")},
			refused: true, keep: []string{amqpUUIDHeader, "after"}, drop: []string{"arr"}, why: "over 8192 elements"},
		{name: "an unknown field type", frameMax: 131072, entries: [][]byte{longstrEntry(amqpUUIDHeader, "u1"), entry("odd", 'U', []byte{0, 1}), longstrEntry("after", "lost")},
			refused: true, keep: []string{amqpUUIDHeader}, drop: []string{"odd", "after"}, why: "unknown"},
		{name: "a header frame over frame_max", frameMax: 4096, entries: [][]byte{longstrEntry("big", big), longstrEntry(amqpUUIDHeader, "u1"), longstrEntry("small", "kept")},
			refused: true, keep: []string{amqpUUIDHeader, "small"}, drop: []string{"big"}, why: "over the connection's frame_max of 4096"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			headers := [][]byte{contentHeader(4, c.entries...), contentHeader(2, longstrEntry(amqpUUIDHeader, "next"))}
			bodies := []string{"body", "ok"}
			if c.refused {
				// The premise: amqp091-go alone cannot read it, and ends
				// the connection (watermill-amqp then loops on it).
				got, closeErr := consumeFake(t, false, c.frameMax, headers, bodies)
				if len(got) != 0 || closeErr == nil {
					t.Fatalf("without the guard: %d deliveries, close %v; want the connection dropped", len(got), closeErr)
				}
			}
			got, closeErr := consumeFake(t, true, c.frameMax, headers, bodies)
			if closeErr != nil || len(got) != 2 {
				t.Fatalf("with the guard: %d deliveries, close %v", len(got), closeErr)
			}
			d := got[0]
			if string(d.Body) != "body" || d.MessageId != "msg-id-1" || d.ContentType != "application/json" {
				t.Fatalf("body %q, message-id %q, content type %q: not kept", d.Body, d.MessageId, d.ContentType)
			}
			if string(got[1].Body) != "ok" || got[1].Headers[amqpUUIDHeader] != "next" {
				t.Fatalf("the delivery after it: %q %v", got[1].Body, got[1].Headers)
			}
			why, guarded := d.Headers[amqpFrameGuardKey].(string)
			if guarded != c.refused {
				t.Fatalf("rewritten %t, want %t (%v)", guarded, c.refused, why)
			}
			msg, err := TolerantAMQPMarshaler{Inner: wamqp.DefaultMarshaler{}}.Unmarshal(d)
			if err != nil {
				t.Fatal(err)
			}
			if !c.refused {
				if antidote.IsUndecodable(msg) || len(d.Headers) != len(c.entries) {
					t.Fatalf("a readable delivery was changed: %d headers, %v", len(d.Headers), msg.Metadata[antidote.MetadataUndecodable])
				}
				return
			}
			if !strings.Contains(why, c.why) {
				t.Errorf("reason %q does not say %q", why, c.why)
			}
			for _, k := range c.keep {
				if _, ok := d.Headers[k]; !ok {
					t.Errorf("header %s not kept: %v", k, why)
				}
			}
			for _, k := range c.drop {
				if _, ok := d.Headers[k]; ok {
					t.Errorf("header %s kept", k)
				}
			}
			if !antidote.IsUndecodable(msg) || !strings.Contains(msg.Metadata[antidote.MetadataUndecodable], c.why) || string(msg.Payload) != "body" {
				t.Fatalf("decoded as %s %q %v", msg.UUID, msg.Payload, msg.Metadata)
			}
			if _, ok := msg.Metadata[amqpFrameGuardKey]; ok {
				t.Fatal("the guard's key reaches the metadata")
			}
		})
	}
}

// amqpCheckContentHeader refuses exactly what amqp091-go refuses, on
// random-ish tables around the limits: each verdict checked against the
// client's own reader, through the fake server.
func TestAMQPCheckContentHeaderAgreesWithTheClient(t *testing.T) {
	for _, e := range [][]byte{
		entry("t", 't', []byte{1}), entry("D", 'D', []byte{2, 0, 0, 0, 7}), entry("T", 'T', make([]byte, 8)),
		entry("x", 'x', ls([]byte{0, 255})), entry("A", 'A', ls(append(entry("", 'V', nil)[1:], 'l', 0, 0, 0, 0, 0, 0, 0, 1))),
		entry("F", 'F', ls(entry("in", 'd', make([]byte, 8)))), entry("V", 'V', nil), entry("u", 'u', []byte{0, 1}),
		entry("bad-x", 'x', []byte{0xff, 0xff, 0xff, 0xff}),
	} {
		h := contentHeader(1, e)
		_, closeErr := consumeFake(t, false, 131072, [][]byte{h}, []string{"b"})
		clientRefuses := closeErr != nil
		if ourRefusal := amqpCheckContentHeader(h) != nil; ourRefusal != clientRefuses {
			t.Errorf("entry %q: we refuse %t, amqp091-go %t (%v)", e, ourRefusal, clientRefuses, closeErr)
		}
	}
	if err := amqpCheckContentHeader([]byte{0, 60}); !errors.Is(err, errAMQPSyntax) {
		t.Errorf("a truncated frame: %v", err)
	}
}
