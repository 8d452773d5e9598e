package msbagent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// randomBytes is reproducible data in which a misplaced or repeated chunk
// cannot go unnoticed.
func randomBytes(n int, seed int64) []byte {
	data := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(data)
	return data
}

// readAllSmall reads r to the end through a small buffer, checking that it
// ends with io.EOF and keeps returning io.EOF.
func readAllSmall(t *testing.T, r io.Reader, bufSize int) []byte {
	t.Helper()
	var got bytes.Buffer
	buf := make([]byte, bufSize)
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read after %d bytes: %v", got.Len(), err)
		}
		if n > bufSize {
			t.Fatalf("Read returned %d bytes into a %d-byte buffer", n, bufSize)
		}
	}
	if n, err := r.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
	return got.Bytes()
}

func TestStreamLargeFileRoundTrip(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	removeFromRelayAfter(t, "stream")
	if err := c.Mkdir(ctx, "/stream"); err != nil {
		t.Fatal(err)
	}
	data := randomBytes(20<<20, 1)

	w, err := c.Create(ctx, "/stream/big.bin", 0o640)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	// Uneven sizes, some larger than the library's frames and the
	// binding's pieces, so chunk boundaries fall everywhere.
	sizes := []int{1, 4093, 65537, 3<<20 + 11, 7, 1<<20 + 3, 333333}
	for off, i := 0, 0; off < len(data); i++ {
		end := off + sizes[i%len(sizes)]
		if end > len(data) {
			end = len(data)
		}
		n, err := w.Write(data[off:end])
		if err != nil || n != end-off {
			t.Fatalf("Write(%d bytes at %d) = %d, %v", end-off, off, n, err)
		}
		off = end
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close (finishing the file): %v", err)
	}
	hostPath := filepath.Join(relayRoot, "stream/big.bin")
	onHost, err := os.ReadFile(hostPath)
	if err != nil || !bytes.Equal(onHost, data) {
		t.Fatalf("the guest file holds %d bytes (%v), want the %d written", len(onHost), err, len(data))
	}
	if fi, err := os.Stat(hostPath); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("the guest file's mode = %v (%v), want 0640", fi.Mode().Perm(), err)
	}

	r, err := c.Open(ctx, "/stream/big.bin")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if got := readAllSmall(t, r, 4099); !bytes.Equal(got, data) {
		t.Fatalf("small reads returned %d bytes that differ from the %d written", len(got), len(data))
	}
	if err := r.Close(); err != nil {
		t.Fatalf("reader Close: %v", err)
	}

	// The same through io.Copy in both directions: a single 20 MiB Write,
	// then reads as large as io.Copy likes.
	w, err = c.Create(ctx, "/stream/copied.bin", 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(w, bytes.NewReader(data)); n != int64(len(data)) || err != nil {
		t.Fatalf("io.Copy into the writer = %d, %v", n, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err = c.Open(ctx, "/stream/copied.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var back bytes.Buffer
	if n, err := io.Copy(&back, r); n != int64(len(data)) || err != nil {
		t.Fatalf("io.Copy from the reader = %d, %v; want %d, nil", n, err, len(data))
	}
	if !bytes.Equal(back.Bytes(), data) {
		t.Fatal("io.Copy from the reader returned different bytes")
	}
}

func TestStreamMissingFileIsGuestError(t *testing.T) {
	c := connect(t)
	r, err := c.Open(testCtx(t), "/no/such/file")
	if err == nil {
		// The request is only sent by Open: the guest's answer comes with
		// the first Read.
		defer r.Close()
		_, err = io.ReadAll(r)
	}
	if !errors.Is(err, msbagent.ErrGuest) {
		t.Fatalf("reading a missing file = %v, want ErrGuest", err)
	}
	var e *msbagent.Error
	if !errors.As(err, &e) || e.Message == "" {
		t.Fatalf("the error %#v carries no guest message", err)
	}
	if r != nil {
		if _, again := r.Read(make([]byte, 8)); !errors.Is(again, msbagent.ErrGuest) {
			t.Fatalf("a second Read = %v, want the same ErrGuest", again)
		}
	}
}

func TestStreamWriteAfterClose(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	w, err := c.Create(ctx, "/stream-closed.txt", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("before close")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := w.Write([]byte("after close")); n != 0 || !errors.Is(err, msbagent.ErrClosed) {
		t.Fatalf("Write after Close = %d, %v; want 0, ErrClosed", n, err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	data, err := c.ReadFile(ctx, "/stream-closed.txt")
	if err != nil || string(data) != "before close" {
		t.Fatalf("the file holds %q (%v), want only what was written before Close", data, err)
	}
}

func TestStreamCancelMidRead(t *testing.T) {
	c := connect(t)
	source := filepath.Join(relayRoot, "stream-source")
	t.Cleanup(func() { os.Remove(source) })
	finishSource := func() {}
	if c.Generation() < handleFSGeneration {
		// A FIFO stands in for a file that arrives slowly: the relay
		// sends what we write into it, then waits, leaving the reader
		// blocked.
		if err := syscall.Mkfifo(source, 0o600); err != nil {
			t.Fatal(err)
		}
		// Opened read-write so that neither side's open waits for the other.
		feed, err := os.OpenFile(source, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer feed.Close()
		go feed.Write(bytes.Repeat([]byte("f"), 5<<20+100))
		finishSource = func() { feed.Close() }
	} else {
		// Handle-based reads are positioned, which a FIFO refuses: a
		// sparse file far longer than the test reads stands in for a
		// long stream instead.
		f, err := os.Create(source)
		if err != nil {
			t.Fatal(err)
		}
		err = f.Truncate(1 << 30)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	r, err := c.Open(ctx, "/stream-source")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var received atomic.Int64
	readDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			received.Add(int64(n))
			if err != nil {
				readDone <- err
				return
			}
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); received.Load() < 1<<20; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes arrived from the FIFO", received.Load())
		}
	}
	time.Sleep(100 * time.Millisecond) // let the reader block on the stalled stream, or read on
	select {
	case err := <-readDone:
		t.Fatalf("the read ended before cancellation: %v", err)
	default:
	}

	cancelAndExpectReadCancelled(t, cancel, readDone)
	if err := r.Close(); err != nil {
		t.Fatalf("Close after cancel: %v", err)
	}

	// Let the relay finish the abandoned read: its last chunk and answer
	// must not disturb the calls that follow.
	finishSource()
	ctx2 := testCtx(t)
	if err := c.WriteFile(ctx2, "/after-stream-cancel", []byte("still here"), 0o600); err != nil {
		t.Fatalf("WriteFile after a cancelled read: %v", err)
	}
	data, err := c.ReadFile(ctx2, "/after-stream-cancel")
	if err != nil || string(data) != "still here" {
		t.Fatalf("ReadFile after a cancelled read = %q, %v", data, err)
	}
	res, err := c.Run(ctx2, "echo", &msbagent.ExecOptions{Args: []string{"ok"}})
	if err != nil || string(res.Stdout) != "ok\n" {
		t.Fatalf("Run after a cancelled read = %+v, %v", res, err)
	}
}

func TestStreamCloseReaderEarly(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	data := randomBytes(20<<20, 2)
	if err := os.WriteFile(filepath.Join(relayRoot, "stream-early.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	// Several readers abandoned with most of the file unread: their
	// leftovers must be dropped, not pile up against the memory budget.
	for i := 0; i < 5; i++ {
		r, err := c.Open(ctx, "/stream-early.bin")
		if err != nil {
			t.Fatal(err)
		}
		head := make([]byte, 100<<10)
		if _, err := io.ReadFull(r, head); err != nil {
			t.Fatalf("reading the start: %v", err)
		}
		if !bytes.Equal(head, data[:len(head)]) {
			t.Fatal("the start of the file differs")
		}
		if err := r.Close(); err != nil {
			t.Fatalf("Close before EOF: %v", err)
		}
		if n, err := r.Read(head); n != 0 || !errors.Is(err, msbagent.ErrClosed) {
			t.Fatalf("Read after Close = %d, %v; want 0, ErrClosed", n, err)
		}
		if err := r.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}

	r, err := c.Open(ctx, "/stream-early.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("a full read after early closes returned %d bytes (%v), want the %d of the file", len(got), err, len(data))
	}
	res, err := c.Run(ctx, "echo", &msbagent.ExecOptions{Args: []string{"ok"}})
	if err != nil || string(res.Stdout) != "ok\n" {
		t.Fatalf("Run after early closes = %+v, %v", res, err)
	}
}

func TestStreamAbandonedWriter(t *testing.T) {
	c := connect(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	w, err := c.Create(ctx, "/stream-abandoned.bin", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(randomBytes(2<<20, 3)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := w.Write([]byte("more")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Write after cancel = %v, want context.Canceled", err)
	}
	if err := w.Close(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close after cancel = %v, want context.Canceled", err)
	}
	// Abandoned, never finished: the client carries on.
	if err := c.WriteFile(testCtx(t), "/after-abandon", []byte("ok"), 0); err != nil {
		t.Fatalf("WriteFile after an abandoned writer: %v", err)
	}
	if data, err := c.ReadFile(testCtx(t), "/after-abandon"); err != nil || string(data) != "ok" {
		t.Fatalf("ReadFile after an abandoned writer = %q, %v", data, err)
	}
}
