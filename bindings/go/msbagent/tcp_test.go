package msbagent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// echoServer listens on the host's loopback (the development relay makes
// the guest's connections from the host) and echoes each connection until
// the client half-closes, then closes its side.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				io.Copy(conn, conn)
			}()
		}
	}()
	return l
}

func TestDialTCP(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	server := echoServer(t)
	if c.Generation() < tcpGeneration {
		_, err := c.Dial(ctx, "tcp", server.Addr().String())
		var opErr *net.OpError
		if !errors.Is(err, msbagent.ErrUnsupported) || !errors.As(err, &opErr) {
			t.Fatalf("Dial on generation %d = %v, want a *net.OpError matching ErrUnsupported", c.Generation(), err)
		}
		return
	}
	conn, err := c.Dial(ctx, "tcp", server.Addr().String())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if conn.RemoteAddr().String() != server.Addr().String() || conn.RemoteAddr().Network() != "tcp" {
		t.Errorf("RemoteAddr = %v", conn.RemoteAddr())
	}

	// Data both ways, more than one chunk.
	payload := bytes.Repeat([]byte("through the guest "), 20000)
	writeDone := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		writeDone <- err
	}()
	echoed := make([]byte, len(payload))
	if _, err := io.ReadFull(conn, echoed); err != nil || !bytes.Equal(echoed, payload) {
		t.Fatalf("echo: %v (equal %v)", err, bytes.Equal(echoed, payload))
	}
	if err := <-writeDone; err != nil {
		t.Fatalf("Write: %v", err)
	}

	// A read deadline wakes a blocked Read with a timeout, and the
	// connection stays usable.
	if err := conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = conn.Read(make([]byte, 10))
	var netErr net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Fatalf("Read past its deadline = %v, want a timeout net.Error", err)
	}
	if waited := time.Since(start); waited < 90*time.Millisecond || waited > 2*time.Second {
		t.Errorf("the deadline ended the Read after %v", waited)
	}
	// Moving the deadline away wakes nothing and lets reads on.
	readDone := make(chan error, 1)
	go func() {
		conn.SetReadDeadline(time.Time{})
		buf := make([]byte, 5)
		_, err := io.ReadFull(conn, buf)
		if err == nil && string(buf) != "again" {
			err = errors.New("read " + string(buf))
		}
		readDone <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if _, err := conn.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	if err := <-readDone; err != nil {
		t.Fatalf("Read after clearing the deadline: %v", err)
	}
	// An expired write deadline fails the write at once.
	conn.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := conn.Write([]byte("late")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write past its deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	conn.SetWriteDeadline(time.Time{})

	// Half-close: the server sees EOF, closes its side, we read EOF.
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if rest, err := io.ReadAll(conn); err != nil || len(rest) != 0 {
		t.Fatalf("reading after the half-close = %q, %v; want EOF", rest, err)
	}
	if err := conn.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := conn.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v, want net.ErrClosed", err)
	}
}

// Close wakes a Read blocked on the poller; a refused connection carries
// the guest's errno; bad arguments are refused before the guest is asked.
func TestDialTCPFailures(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	if c.Generation() < tcpGeneration {
		if _, err := c.Dial(ctx, "tcp", "127.0.0.1:9"); !errors.Is(err, msbagent.ErrUnsupported) {
			t.Fatalf("Dial on generation %d = %v, want ErrUnsupported", c.Generation(), err)
		}
		return
	}
	server := echoServer(t)
	conn, err := c.Dial(ctx, "tcp", server.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	readDone := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 10))
		readDone <- err
	}()
	time.Sleep(50 * time.Millisecond)
	conn.Close()
	select {
	case err := <-readDone:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("a Read blocked across Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not wake the blocked Read")
	}

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedAddr := closed.Addr().String()
	closed.Close()
	if _, err := c.Dial(ctx, "tcp", refusedAddr); !errors.Is(err, syscall.ECONNREFUSED) || !errors.Is(err, msbagent.ErrGuest) {
		t.Errorf("Dial to a closed port = %v, want ECONNREFUSED from the guest", err)
	}
	for _, bad := range []struct{ network, address string }{
		{"udp", "127.0.0.1:53"}, {"tcp", "no-port"}, {"tcp", "host:99999"}, {"tcp", "nul\x00:80"},
	} {
		if _, err := c.Dial(ctx, bad.network, bad.address); err == nil {
			t.Errorf("Dial(%q, %q) succeeded", bad.network, bad.address)
		}
	}

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Dial(cancelled, "tcp", server.Addr().String()); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with a cancelled context = %v, want context.Canceled", err)
	}
}

// Dial has the signature of http.Transport's DialContext: an HTTP client
// whose connections are made by the guest.
func TestDialAsHTTPTransport(t *testing.T) {
	c := connect(t)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	defer server.Close()
	transport := &http.Transport{DialContext: c.Dial}
	defer transport.CloseIdleConnections()
	httpClient := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	resp, err := httpClient.Get(server.URL + "/from-the-guest")
	if c.Generation() < tcpGeneration {
		if !errors.Is(err, msbagent.ErrUnsupported) {
			t.Fatalf("HTTP through generation %d = %v, want ErrUnsupported", c.Generation(), err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "hello /from-the-guest" {
		t.Fatalf("HTTP through the guest = %q, %v", body, err)
	}
}
