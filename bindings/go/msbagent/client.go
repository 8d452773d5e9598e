package msbagent

/*
#include <stdlib.h>
#include <microsandbox_agent.h>
*/
import "C"

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// Client is a connection to one sandbox's agent relay. Its methods may be
// called from any number of goroutines at once.
type Client struct {
	// mu is held shared for the whole of every library call that uses
	// handle, and exclusively by Close to release it, so the handle is
	// never used after it is freed.
	mu     sync.RWMutex
	handle *C.msb_client
	ready  Timings
	peer   peerInfo
}

// peerInfo is what the handshake said about the sandbox; it is fixed for
// the connection's life, so it is copied once at connect.
type peerInfo struct {
	generation     int
	peerGeneration int
	legacy         bool
	agentVersion   string
	idStart, idEnd uint32
}

// Timings are the sandbox start-up timings the relay announced when the
// client connected.
type Timings struct {
	Boot  time.Duration
	Init  time.Duration
	Ready time.Duration
}

var errClientClosed = &Error{Code: StatusClosed, Message: "the client is closed"}

// Connect connects to the relay socket at socketPath and completes the
// handshake, with the library's default connection options. ctx's
// deadline, if any, bounds connecting and the handshake (10 s without
// one); a cancellation is seen within a short slice.
func Connect(ctx context.Context, socketPath string) (*Client, error) {
	return ConnectWithOptions(ctx, socketPath, nil)
}

// ConnectWithOptions is Connect with connection options; nil means the
// defaults. Options the library refuses give an error matching
// ErrInvalidArgument before anything is dialled.
func ConnectWithOptions(ctx context.Context, socketPath string, opts *ConnectOptions) (*Client, error) {
	return connect(ctx, "socket path", socketPath, opts, func(target *C.char, opts *C.msb_connect_options, out **C.msb_client, errOut **C.msb_error) C.msb_status {
		return C.msb_client_connect(target, opts, out, errOut)
	})
}

// ConnectSandbox connects to a sandbox by name, at the socket
// SandboxSocketPath finds for it, with the default connection options. An
// unknown name gives an error matching ErrNotFound.
func ConnectSandbox(ctx context.Context, name string) (*Client, error) {
	return ConnectSandboxWithOptions(ctx, name, nil)
}

// ConnectSandboxWithOptions is ConnectSandbox with connection options; nil
// means the defaults.
func ConnectSandboxWithOptions(ctx context.Context, name string, opts *ConnectOptions) (*Client, error) {
	return connect(ctx, "sandbox name", name, opts, func(target *C.char, opts *C.msb_connect_options, out **C.msb_client, errOut **C.msb_error) C.msb_status {
		return C.msb_client_connect_sandbox(target, opts, out, errOut)
	})
}

// MinMemoryBudget is the smallest memory budget the library accepts, in
// bytes; DefaultMemoryBudget is the one it uses when none is set.
const (
	MinMemoryBudget     = 64 << 10
	DefaultMemoryBudget = 16 << 20
)

// ConnectOptions tune a connection. The zero value is the library's
// defaults, as is a nil *ConnectOptions.
type ConnectOptions struct {
	// MemoryBudget bounds, in bytes, the memory that received messages
	// nobody has read yet may hold (process output, file chunks, TCP
	// data). 0 means DefaultMemoryBudget; otherwise it must be at least
	// MinMemoryBudget. What happens when it is full is Backpressure's
	// choice.
	MemoryBudget int
	// Backpressure is what happens when unread messages fill the memory
	// budget; the zero value is BackpressureFailStream.
	Backpressure Backpressure
}

// Backpressure chooses what a connection does when unread messages fill
// its memory budget.
type Backpressure int

const (
	// BackpressureFailStream (the default): the library stops reading the
	// socket until a read frees memory, for at most 1 s; if the budget is
	// still full then, the stream holding the most unread data fails with
	// ErrStreamOverflow (its process is killed) and the connection and
	// every other stream carry on. A reader slower than the guest loses
	// nothing: the guest is held back meanwhile.
	BackpressureFailStream Backpressure = C.MSB_BACKPRESSURE_FAIL_STREAM
	// BackpressurePauseSocket: the library stops reading the socket until
	// a read frees memory, however long that takes. Nothing fails, but one
	// stream nobody reads pauses every stream of the connection, and the
	// relay sees a client that does not read: a 0.7 relay disconnects it
	// after 5 s (killing its processes), a 0.6 relay stalls every client
	// of the sandbox meanwhile. Use it only when every process, file and
	// connection is read as it arrives.
	BackpressurePauseSocket Backpressure = C.MSB_BACKPRESSURE_PAUSE_SOCKET
)

func (b Backpressure) String() string {
	switch b {
	case BackpressureFailStream:
		return "fail-stream"
	case BackpressurePauseSocket:
		return "pause-socket"
	}
	return "Backpressure(" + strconv.Itoa(int(b)) + ")"
}

// check refuses what the library would, with a message saying why: the
// library's setters report only a status.
func (o *ConnectOptions) check() error {
	if o.MemoryBudget != 0 && o.MemoryBudget < MinMemoryBudget {
		return &Error{Code: StatusInvalidArgument, Message: fmt.Sprintf(
			"memory budget of %d bytes: it must be 0 (the default) or at least %d", o.MemoryBudget, MinMemoryBudget)}
	}
	switch o.Backpressure {
	case BackpressureFailStream, BackpressurePauseSocket:
	default:
		return &Error{Code: StatusInvalidArgument, Message: "unknown backpressure mode " + o.Backpressure.String()}
	}
	return nil
}

// newNativeOptions makes the library's connection options from opts (nil:
// the defaults); the caller frees them.
func newNativeOptions(opts *ConnectOptions) (*C.msb_connect_options, error) {
	if opts == nil {
		opts = &ConnectOptions{}
	}
	if err := opts.check(); err != nil {
		return nil, err
	}
	var native *C.msb_connect_options
	if status := C.msb_connect_options_new(&native); status != C.MSB_OK {
		return nil, statusError(status, nil)
	}
	var status C.msb_status = C.MSB_OK
	if opts.MemoryBudget != 0 {
		status = C.msb_connect_options_set_memory_budget(native, C.size_t(opts.MemoryBudget))
	}
	if status == C.MSB_OK {
		status = C.msb_connect_options_set_backpressure(native, C.int32_t(opts.Backpressure))
	}
	if status != C.MSB_OK {
		C.msb_connect_options_free(native)
		return nil, statusError(status, nil)
	}
	return native, nil
}

// SandboxSocketPath is where the relay socket of the sandbox called name
// is, under $MSB_HOME (default ~/.microsandbox), in the layout of whichever
// runtime line started it; they are tried newest first:
//
//  1. run/sandboxes/<first 24 hex digits of sha256(name)>/agent.sock (0.6.9+)
//  2. run/agent/<first 32 hex digits of sha256(name)>.sock (0.5.2 to 0.6.8)
//  3. sandboxes/<name>/runtime/agent.sock (up to 0.5.1)
//
// The first that exists wins; when none does, the answer is the newest
// layout whose socket paths fit in a Unix socket address. Nothing is
// connected to. A name that is empty, contains '/', or is "." or ".."
// gives ErrInvalidArgument.
func SandboxSocketPath(name string) (string, error) {
	if err := checkString("sandbox name", name); err != nil {
		return "", err
	}
	cName := C.CString(name)
	defer C.free(unsafe.Pointer(cName))
	var path *C.msb_bytes
	var libErr *C.msb_error
	if status := C.msb_sandbox_socket_path(cName, &path, &libErr); status != C.MSB_OK {
		return "", statusError(status, libErr)
	}
	defer C.msb_bytes_free(path)
	return string(C.GoBytes(unsafe.Pointer(C.msb_bytes_data(path)), C.int(C.msb_bytes_len(path)))), nil
}

type connectFunc func(target *C.char, opts *C.msb_connect_options, out **C.msb_client, errOut **C.msb_error) C.msb_status

// connect dials in slices (see callSliced): an abandoned attempt only
// costs the relay a connection that closes, and each attempt's handshake
// gets longer than the one before. Without a deadline in ctx, connecting
// ends after defaultConnectTimeout.
func connect(ctx context.Context, what, target string, options *ConnectOptions, connectC connectFunc) (*Client, error) {
	var handle *C.msb_client
	if err := checkString(what, target); err != nil {
		return nil, err
	}
	native, err := newNativeOptions(options)
	if err != nil {
		return nil, err
	}
	defer C.msb_connect_options_free(native)
	cTarget := C.CString(target)
	defer C.free(unsafe.Pointer(cTarget))
	op := func(timeout C.int64_t) error {
		// Each attempt gets its own slice: only the timeout changes.
		if status := C.msb_connect_options_set_timeout_ms(native, timeout); status != C.MSB_OK {
			return statusError(status, nil)
		}
		var libErr *C.msb_error
		return statusError(connectC(cTarget, native, &handle, &libErr), libErr)
	}
	if err := callSlicedFor(ctx, defaultConnectTimeout, op); err != nil {
		return nil, err
	}
	c := &Client{handle: handle, peer: readPeerInfo(handle)}
	var t C.msb_ready_timings
	if status := C.msb_client_ready_timings(handle, &t); status == C.MSB_OK {
		c.ready = Timings{
			Boot:  time.Duration(t.boot_time_ns),
			Init:  time.Duration(t.init_time_ns),
			Ready: time.Duration(t.ready_time_ns),
		}
	}
	return c, nil
}

func readPeerInfo(handle *C.msb_client) peerInfo {
	info := peerInfo{
		generation:     int(C.msb_client_generation(handle)),
		peerGeneration: int(C.msb_client_peer_generation(handle)),
		legacy:         bool(C.msb_client_is_legacy(handle)),
		agentVersion:   C.GoString(C.msb_client_agent_version(handle)),
	}
	var start, end C.uint32_t
	if C.msb_client_id_range(handle, &start, &end) == C.MSB_OK {
		info.idStart, info.idEnd = uint32(start), uint32(end)
	}
	return info
}

// Ready returns the start-up timings the relay sent during the handshake.
func (c *Client) Ready() Timings {
	return c.ready
}

// Generation is the protocol generation this connection speaks: 1 on a
// legacy (0.3/0.4) relay, otherwise the smaller of the sandbox's and the
// library's. Calls the generation lacks fail with ErrUnsupported.
func (c *Client) Generation() int { return c.peer.generation }

// PeerGeneration is the sandbox's own protocol generation (1 for 0.3.x to
// 0.5.0, 7 for 0.6.x, 9 or 10 for 0.7.x).
func (c *Client) PeerGeneration() int { return c.peer.peerGeneration }

// IsLegacy reports whether the relay used the legacy handshake of 0.3.x
// and 0.4.x (16 clients, filesystem calls in their 0.3.14 shapes).
func (c *Client) IsLegacy() bool { return c.peer.legacy }

// AgentVersion is the agent's version as the sandbox announced it, such as
// "0.7.13"; "" when it did not say (before 0.5.5).
func (c *Client) AgentVersion() string { return c.peer.agentVersion }

// IDRange is this connection's range of correlation ids: start <= id <
// endExclusive.
func (c *Client) IDRange() (start, endExclusive uint32) { return c.peer.idStart, c.peer.idEnd }

// Supports reports whether this connection can carry the message type (a
// wire name such as "core.tcp.connect"): the library knows it and the
// negotiated generation has it. False after Close.
func (c *Client) Supports(msgType string) bool {
	if checkString("message type", msgType) != nil {
		return false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.handle == nil {
		return false
	}
	cType := C.CString(msgType)
	defer C.free(unsafe.Pointer(cType))
	return bool(C.msb_client_supports(c.handle, cType))
}

// Close closes the connection: calls blocked on the client return an error
// matching ErrClosed, and so do later calls. Processes started from it
// fail their reads with ErrClosed but must still be waited for or closed.
// Close is idempotent.
func (c *Client) Close() error {
	// Wake every blocked call first: they hold mu shared until they return.
	c.mu.RLock()
	if c.handle != nil {
		C.msb_client_close(c.handle)
	}
	c.mu.RUnlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handle != nil {
		C.msb_client_free(c.handle)
		c.handle = nil
	}
	return nil
}

// callMode is how a request is made to honour its context: callOnce or
// callSliced (see msbagent.go).
type callMode func(ctx context.Context, op func(timeout C.int64_t) error) error

// call runs one library call on the client's handle, in the given mode.
func (c *Client) call(ctx context.Context, mode callMode, op func(h *C.msb_client, timeout C.int64_t, errOut **C.msb_error) C.msb_status) error {
	return c.callErr(ctx, mode, func(h *C.msb_client, timeout C.int64_t) error {
		var libErr *C.msb_error
		status := op(h, timeout, &libErr)
		return statusError(status, libErr)
	})
}

// openBound runs op (once: it sends), which opens a handle that outlives
// the call (a process, a file stream) and stores the value owning it, and
// ties that handle to ctx: once ctx is done, abandon gives it up, unless
// the channel released returns (asked for only after op succeeded) is
// closed first. abandon runs on the one goroutine that watches ctx; it
// must be bounded (it makes at most a short, bounded library call) and
// that goroutine ends with it.
func (c *Client) openBound(ctx context.Context, op func(h *C.msb_client, timeout C.int64_t) error, abandon func(), released func() <-chan struct{}) error {
	if err := c.callErr(ctx, callOnce, op); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		// Opened while ctx ended: nobody will use the handle.
		abandon()
		return err
	}
	if ctx.Done() == nil {
		return nil
	}
	done := released()
	go func() {
		select {
		case <-ctx.Done():
			abandon()
		case <-done:
		}
	}()
	return nil
}

// callErr is call for operations that may also fail on the Go side.
func (c *Client) callErr(ctx context.Context, mode callMode, op func(h *C.msb_client, timeout C.int64_t) error) error {
	return mode(ctx, func(timeout C.int64_t) error {
		c.mu.RLock()
		defer c.mu.RUnlock()
		if c.handle == nil {
			return errClientClosed
		}
		return op(c.handle, timeout)
	})
}
