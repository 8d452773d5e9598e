package msbagent

/*
#include <stdlib.h>
#include <microsandbox_agent.h>
*/
import "C"

import (
	"context"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// Dial opens a TCP connection from the sandbox to address ("host:port",
// resolved by the guest) and returns it as a net.Conn. network must be
// "tcp", "tcp4" or "tcp6" (the guest picks the address family). It needs
// protocol generation 4 (agents 0.5.5+): on older sandboxes it fails with
// ErrUnsupported.
//
// ctx bounds connecting only; the connection outlives it. A connection the
// guest could not make matches the guest's errno (syscall.ECONNREFUSED,
// ...) and ErrGuest. Reads wait on Go's
// poller and honour SetReadDeadline; writes honour SetWriteDeadline (60 s
// per write without one); Close aborts the stream and CloseWrite half-closes
// it.
func (c *Client) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.AddrError{Err: "invalid port", Addr: address}}
	}
	if err := checkString("host", host); err != nil {
		return nil, err
	}
	var conn *tcpConn
	// The library aborts the guest's attempt when its wait ends, so an
	// attempt may be cut short and made again: connecting is sliced, and
	// a cancelled Dial returns within a slice.
	err = c.callErr(ctx, callSliced, func(h *C.msb_client, timeout C.int64_t) error {
		cHost := C.CString(host)
		defer C.free(unsafe.Pointer(cHost))
		var stream *C.msb_tcp_stream
		var libErr *C.msb_error
		if status := C.msb_tcp_connect(h, cHost, C.uint16_t(port), timeout, &stream, &libErr); status != C.MSB_OK {
			return statusError(status, libErr)
		}
		var err error
		conn, err = newTCPConn(stream, tcpAddr(net.JoinHostPort(host, portText)))
		if err != nil {
			C.msb_tcp_stream_free(stream)
		}
		return err
	})
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Addr: tcpAddr(address), Err: err}
	}
	return conn, nil
}

// tcpAddr is an address as the guest was asked for it.
type tcpAddr string

func (a tcpAddr) Network() string { return "tcp" }
func (a tcpAddr) String() string  { return string(a) }

// sandboxAddr is the local end of a connection dialled from the sandbox,
// which has no address the host could name.
type sandboxAddr struct{}

func (sandboxAddr) Network() string { return "tcp" }
func (sandboxAddr) String() string  { return "sandbox" }

// tcpConn is a TCP stream opened in the guest, as a net.Conn.
type tcpConn struct {
	remote tcpAddr

	// handleMu is held shared for every library call on handle and
	// exclusively to free it; handle is nil once freed.
	handleMu  sync.RWMutex
	handle    *C.msb_tcp_stream
	readiness *readinessWaiter

	// stateMu guards closed and the deadlines: a deadline is applied to
	// the readiness descriptor (for reads) under it, so that Close, which
	// sets an expired one to wake a blocked Read, cannot be undone.
	stateMu       sync.Mutex
	closed        bool
	writeDeadline time.Time

	readMu  sync.Mutex // serialises Read; guards pending and readEnd
	pending []byte     // the unread rest of the last chunk pulled
	readEnd error      // io.EOF, or the failure that ended the stream

	writeMu sync.Mutex // serialises Write and CloseWrite
}

func newTCPConn(stream *C.msb_tcp_stream, remote tcpAddr) (*tcpConn, error) {
	readiness, err := readinessOf("msb-tcp-readiness", func(fd *C.int, errOut **C.msb_error) C.msb_status {
		return C.msb_tcp_readiness_fd(stream, fd, errOut)
	})
	if err != nil {
		return nil, err
	}
	return &tcpConn{remote: remote, handle: stream, readiness: readiness}, nil
}

func (c *tcpConn) LocalAddr() net.Addr  { return sandboxAddr{} }
func (c *tcpConn) RemoteAddr() net.Addr { return c.remote }

// opError wraps err as the net package does for its connections.
func (c *tcpConn) opError(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: sandboxAddr{}, Addr: c.remote, Err: err}
}

func (c *tcpConn) isClosed() bool {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	return c.closed
}

// Read returns data the remote end sent, waiting for it on Go's poller until
// the read deadline. After the remote end closed its side it returns io.EOF.
func (c *tcpConn) Read(b []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	for {
		if c.isClosed() {
			return 0, c.opError("read", net.ErrClosed)
		}
		if len(c.pending) > 0 || len(b) == 0 {
			n := copy(b, c.pending)
			c.pending = c.pending[n:]
			return n, nil
		}
		if c.readEnd != nil {
			return 0, c.opError("read", c.readEnd)
		}
		chunk, err := c.pull()
		switch {
		case c.isClosed():
			// Close woke the wait (or closed the descriptor under it):
			// the check above reports it.
		case err == nil:
			c.pending = chunk
		case err == os.ErrDeadlineExceeded:
			return 0, c.opError("read", os.ErrDeadlineExceeded)
		default:
			c.readEnd = err
		}
	}
}

// pull waits on the poller until the library has a chunk or the end of the
// stream, and takes it without blocking. A wait cut short by the read
// deadline (or by Close, which sets an expired one) gives
// os.ErrDeadlineExceeded.
func (c *tcpConn) pull() ([]byte, error) {
	var chunk []byte
	pullErr, waitErr := c.readiness.pull(func(errOut **C.msb_error) (C.msb_status, error) {
		c.handleMu.RLock()
		defer c.handleMu.RUnlock()
		if c.handle == nil {
			return 0, net.ErrClosed
		}
		var buf *C.msb_bytes
		status := C.msb_tcp_read(c.handle, 0, &buf, errOut)
		if status == C.MSB_OK {
			chunk = takeBytes(buf)
		}
		return status, nil
	})
	if waitErr != nil {
		if os.IsTimeout(waitErr) {
			return nil, os.ErrDeadlineExceeded
		}
		return nil, &Error{Code: StatusIO, Message: "waiting for stream data: " + waitErr.Error()}
	}
	return chunk, pullErr
}

// writeTimeout is the library timeout for a write starting now: until the
// write deadline, or defaultCallTimeout without one. An expired deadline
// gives ok == false.
func (c *tcpConn) writeTimeout() (timeout C.int64_t, ok bool) {
	c.stateMu.Lock()
	deadline := c.writeDeadline
	c.stateMu.Unlock()
	if deadline.IsZero() {
		return durationMs(defaultCallTimeout), true
	}
	left := time.Until(deadline)
	if left <= 0 {
		return 0, false
	}
	return durationMs(left), true
}

// withHandle runs a library call on the live stream.
func (c *tcpConn) withHandle(op func(h *C.msb_tcp_stream, errOut **C.msb_error) C.msb_status) error {
	c.handleMu.RLock()
	defer c.handleMu.RUnlock()
	if c.handle == nil {
		return net.ErrClosed
	}
	var libErr *C.msb_error
	return statusError(op(c.handle, &libErr), libErr)
}

// Write sends b to the remote end. It blocks only while the connection's
// socket is full (or the stream's send window, on sandboxes with flow
// control), at most until the write deadline.
func (c *tcpConn) Write(b []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	written := 0
	for written < len(b) {
		if c.isClosed() {
			return written, c.opError("write", net.ErrClosed)
		}
		timeout, ok := c.writeTimeout()
		if !ok {
			return written, c.opError("write", os.ErrDeadlineExceeded)
		}
		piece := b[written:]
		if len(piece) > writePiece {
			piece = piece[:writePiece]
		}
		err := c.withHandle(func(h *C.msb_tcp_stream, errOut **C.msb_error) C.msb_status {
			// The library copies the bytes into the socket before returning
			// and keeps no pointer to them.
			return C.msb_tcp_write(h, (*C.uint8_t)(unsafe.Pointer(&piece[0])), C.size_t(len(piece)), timeout, errOut)
		})
		if e, isLib := err.(*Error); isLib && e.Code == StatusTimeout {
			err = os.ErrDeadlineExceeded
		}
		if err != nil {
			return written, c.opError("write", err)
		}
		written += len(piece)
	}
	return written, nil
}

// CloseWrite half-closes the stream: the remote end reads EOF, and data it
// sends can still be read.
func (c *tcpConn) CloseWrite() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.isClosed() {
		return c.opError("close", net.ErrClosed)
	}
	timeout, ok := c.writeTimeout()
	if !ok {
		return c.opError("close", os.ErrDeadlineExceeded)
	}
	return c.opError("close", c.withHandle(func(h *C.msb_tcp_stream, errOut **C.msb_error) C.msb_status {
		return C.msb_tcp_shutdown_write(h, timeout, errOut)
	}))
}

// Close aborts the stream in both directions; blocked reads return at
// once with net.ErrClosed. A second Close returns net.ErrClosed, as the
// net package's connections do.
func (c *tcpConn) Close() error {
	c.stateMu.Lock()
	if c.closed {
		c.stateMu.Unlock()
		return c.opError("close", net.ErrClosed)
	}
	c.closed = true
	c.readiness.interrupt()
	c.stateMu.Unlock()
	// Freeing waits for calls in progress: a blocked Read has been woken,
	// and a Write is bounded by its timeout.
	c.handleMu.Lock()
	C.msb_tcp_stream_free(c.handle)
	c.handle = nil
	c.handleMu.Unlock()
	c.readiness.close()
	return nil
}

func (c *tcpConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline also applies to a Read already blocked.
func (c *tcpConn) SetReadDeadline(t time.Time) error {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if c.closed {
		return c.opError("set", net.ErrClosed)
	}
	return c.readiness.file.SetReadDeadline(t)
}

// SetWriteDeadline applies to writes that start after it.
func (c *tcpConn) SetWriteDeadline(t time.Time) error {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if c.closed {
		return c.opError("set", net.ErrClosed)
	}
	c.writeDeadline = t
	return nil
}
