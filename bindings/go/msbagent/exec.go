package msbagent

/*
#include <stdlib.h>
#include <microsandbox_agent.h>
*/
import "C"

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// ExecOptions describe how to run a command. The zero value (or a nil
// *ExecOptions) runs it with no arguments, the guest's default environment,
// directory and user, and no terminal.
type ExecOptions struct {
	// Args are the command's arguments (not including the command itself).
	Args []string
	// Env entries, "KEY=value", are added to the guest's default
	// environment.
	Env []string
	// Dir is the working directory in the guest ("" for the default).
	Dir string
	// User is the guest user to run as ("" for the agent's default).
	User string
	// TTY runs the command on a pseudo-terminal of Rows x Cols (24x80 when
	// zero). Stderr then arrives merged into stdout.
	TTY        bool
	Rows, Cols uint16
	// Rlimits are resource limits to apply in the guest.
	Rlimits []Rlimit
}

// Rlimit is a resource limit: Resource is a lower-case name such as
// "nofile", "nproc", "as" or "cpu".
type Rlimit struct {
	Resource   string
	Soft, Hard uint64
}

// RunResult is the outcome of a command run to completion.
type RunResult struct {
	// ExitCode is the command's exit status; -1 if it was killed by a
	// signal or could not be started.
	ExitCode int
	Stdout   []byte
	Stderr   []byte
}

// killTimeout bounds sending the SIGKILL that ends a cancelled process.
const killTimeout = 2 * time.Second

func (o *ExecOptions) check(cmd string) error {
	if err := checkString("command", cmd); err != nil {
		return err
	}
	for _, s := range append(append([]string{o.Dir, o.User}, o.Args...), o.Env...) {
		if err := checkString("exec option", s); err != nil {
			return err
		}
	}
	for _, kv := range o.Env {
		if i := strings.IndexByte(kv, '='); i <= 0 {
			return &Error{Code: StatusInvalidArgument, Message: fmt.Sprintf("environment entry %q is not KEY=value", kv)}
		}
	}
	for _, r := range o.Rlimits {
		if err := checkString("rlimit resource", r.Resource); err != nil {
			return err
		}
	}
	return nil
}

// withCString calls f with a temporary C copy of s.
func withCString(s string, f func(*C.char) C.msb_status) C.msb_status {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	return f(cs)
}

// newExecRequest builds the library's request; the caller frees it.
func newExecRequest(cmd string, o *ExecOptions) (*C.msb_exec_request, error) {
	var req *C.msb_exec_request
	var libErr *C.msb_error
	status := withCString(cmd, func(c *C.char) C.msb_status { return C.msb_exec_request_new(c, &req, &libErr) })
	if status != C.MSB_OK {
		return nil, statusError(status, libErr)
	}
	steps := make([]func() C.msb_status, 0, len(o.Args)+len(o.Env)+len(o.Rlimits)+3)
	for _, arg := range o.Args {
		arg := arg
		steps = append(steps, func() C.msb_status {
			return withCString(arg, func(c *C.char) C.msb_status { return C.msb_exec_request_add_arg(req, c, &libErr) })
		})
	}
	for _, kv := range o.Env {
		key, value, _ := strings.Cut(kv, "=")
		steps = append(steps, func() C.msb_status {
			return withCString(key, func(k *C.char) C.msb_status {
				return withCString(value, func(v *C.char) C.msb_status { return C.msb_exec_request_add_env(req, k, v, &libErr) })
			})
		})
	}
	if o.Dir != "" {
		steps = append(steps, func() C.msb_status {
			return withCString(o.Dir, func(c *C.char) C.msb_status { return C.msb_exec_request_set_cwd(req, c, &libErr) })
		})
	}
	if o.User != "" {
		steps = append(steps, func() C.msb_status {
			return withCString(o.User, func(c *C.char) C.msb_status { return C.msb_exec_request_set_user(req, c, &libErr) })
		})
	}
	if o.TTY || o.Rows != 0 || o.Cols != 0 {
		rows, cols := o.Rows, o.Cols
		if rows == 0 {
			rows = 24
		}
		if cols == 0 {
			cols = 80
		}
		steps = append(steps, func() C.msb_status {
			return C.msb_exec_request_set_tty(req, C.bool(o.TTY), C.uint16_t(rows), C.uint16_t(cols), &libErr)
		})
	}
	for _, r := range o.Rlimits {
		r := r
		steps = append(steps, func() C.msb_status {
			return withCString(r.Resource, func(c *C.char) C.msb_status {
				return C.msb_exec_request_add_rlimit(req, c, C.uint64_t(r.Soft), C.uint64_t(r.Hard), &libErr)
			})
		})
	}
	for _, step := range steps {
		if status := step(); status != C.MSB_OK {
			C.msb_exec_request_free(req)
			return nil, statusError(status, libErr)
		}
	}
	return req, nil
}

// Process is a command running in the guest, started by Client.Exec.
//
// Its one event stream (start, output, exit) is pulled on demand: a read of
// Stdout or Stderr, or Wait, pulls events until it has what it needs,
// keeping output of the other stream in memory for its reader. Waiting is
// done on Go's network poller through the library's readiness descriptor,
// so a blocked reader does not hold an OS thread.
//
// Wait (or Close) must be called to release the process's resources.
type Process struct {
	ctx context.Context

	// handleMu is held shared for every library call on handle and
	// exclusively to free it; handle is nil once released.
	handleMu sync.RWMutex
	handle   *C.msb_exec

	// readiness waits for the library's event stream on Go's poller.
	readiness *readinessWaiter

	// released is closed once the handle has been freed; it stops the
	// goroutine watching ctx.
	released chan struct{}

	mu       sync.Mutex // guards everything below
	stdout   bytes.Buffer
	stderr   bytes.Buffer
	pid      int
	exitCode int
	finished bool  // the stream is over: exited, failed or closed
	endErr   error // why it is over if not by exiting
	// stdinErr is the guest's first report that writing stdin into the
	// process failed; later stdin writes return it.
	stdinErr *StdinError
	pulling  bool // a goroutine is pulling; the others wait on progress
	progress chan struct{}
	freed    bool // release has started
}

// Exec starts cmd in the guest. ctx governs the process's whole life: once
// ctx is done the process is killed and every read, write and Wait returns
// ctx.Err(). Use context.Background() for a process that should run until
// it exits.
func (c *Client) Exec(ctx context.Context, cmd string, opts *ExecOptions) (*Process, error) {
	if opts == nil {
		opts = &ExecOptions{}
	}
	if err := opts.check(cmd); err != nil {
		return nil, err
	}
	var p *Process
	op := func(h *C.msb_client, timeout C.int64_t) error {
		req, err := newExecRequest(cmd, opts)
		if err != nil {
			return err
		}
		defer C.msb_exec_request_free(req)
		var exec *C.msb_exec
		var libErr *C.msb_error
		if status := C.msb_exec_start(h, req, timeout, &exec, &libErr); status != C.MSB_OK {
			return statusError(status, libErr)
		}
		p, err = newProcess(ctx, exec)
		if err != nil {
			C.msb_exec_signal(exec, C.int32_t(syscall.SIGKILL), C.int64_t(killTimeout/time.Millisecond), nil)
			C.msb_exec_free(exec)
		}
		return err
	}
	// Once ctx ends the process is killed.
	abort := func() { p.abort() }
	if err := c.openBound(ctx, op, abort, func() <-chan struct{} { return p.released }); err != nil {
		return nil, err
	}
	return p, nil
}

// newProcess wraps a started exec, setting up its readiness descriptor
// with Go's poller.
func newProcess(ctx context.Context, exec *C.msb_exec) (*Process, error) {
	readiness, err := readinessOf("msb-exec-readiness", func(fd *C.int, errOut **C.msb_error) C.msb_status {
		return C.msb_exec_readiness_fd(exec, fd, errOut)
	})
	if err != nil {
		return nil, err
	}
	return &Process{
		ctx:       ctx,
		handle:    exec,
		readiness: readiness,
		released:  make(chan struct{}),
		progress:  make(chan struct{}),
	}, nil
}

// abort kills the process and releases it, waking a goroutine waiting on
// the poller (its wait fails with a deadline error).
func (p *Process) abort() {
	p.kill()
	p.mu.Lock()
	p.finishLocked(errProcessAborted)
	p.mu.Unlock()
	p.readiness.interrupt()
	p.mu.Lock()
	p.releaseIfIdleLocked()
}

func (p *Process) kill() {
	p.handleMu.RLock()
	defer p.handleMu.RUnlock()
	if p.handle != nil {
		C.msb_exec_signal(p.handle, C.int32_t(syscall.SIGKILL), C.int64_t(killTimeout/time.Millisecond), nil)
	}
}

func (p *Process) finishLocked(err error) {
	if !p.finished {
		p.finished = true
		p.endErr = err
	}
}

// releaseIfIdleLocked frees the handle once the stream is over and nobody
// is pulling from it. It is called with p.mu held and returns with it
// released.
func (p *Process) releaseIfIdleLocked() {
	if !p.finished || p.pulling || p.freed {
		p.mu.Unlock()
		return
	}
	p.freed = true
	p.mu.Unlock()
	// Outside p.mu: a stdin write may hold handleMu while the socket is
	// full, and readers must not stall behind it.
	p.handleMu.Lock()
	C.msb_exec_free(p.handle)
	p.handle = nil
	p.handleMu.Unlock()
	p.readiness.close()
	close(p.released)
}

// event is one exec event copied into Go memory.
type event struct {
	kind     C.msb_exec_kind
	data     []byte
	pid      int
	exitCode int
	// failure is set for MSB_EXEC_FAILED, stdinErr for MSB_EXEC_STDIN_ERROR.
	failure  *ExecFailedError
	stdinErr *StdinError
}

// optionalString copies a borrowed C string that may be NULL.
func optionalString(s *C.char) string {
	if s == nil {
		return ""
	}
	return C.GoString(s)
}

// pullOne waits on the poller until an event can be pulled, and pulls it
// without blocking. A pull that finds nothing consumes nothing, so giving
// up the wait loses no event.
func (p *Process) pullOne() (event, error) {
	var ev event
	pullErr, waitErr := p.readiness.pull(func(errOut **C.msb_error) (C.msb_status, error) {
		var cEvent *C.msb_exec_event
		p.handleMu.RLock()
		status := C.msb_exec_next_event(p.handle, 0, &cEvent, errOut)
		p.handleMu.RUnlock()
		if status == C.MSB_OK {
			ev = takeEvent(cEvent)
		}
		return status, nil
	})
	if waitErr != nil {
		if err := p.ctx.Err(); err != nil {
			return ev, err
		}
		return ev, &Error{Code: StatusIO, Message: "waiting for process events: " + waitErr.Error()}
	}
	return ev, pullErr
}

// takeEvent copies an event the library handed over into Go memory and
// frees it.
func takeEvent(cEvent *C.msb_exec_event) event {
	defer C.msb_exec_event_free(cEvent)
	ev := event{kind: C.msb_exec_event_kind(cEvent)}
	switch ev.kind {
	case C.MSB_EXEC_STARTED:
		ev.pid = int(C.msb_exec_event_pid(cEvent))
	case C.MSB_EXEC_EXITED:
		ev.exitCode = int(C.msb_exec_event_exit_code(cEvent))
	case C.MSB_EXEC_STDOUT, C.MSB_EXEC_STDERR:
		var n C.size_t
		data := C.msb_exec_event_data(cEvent, &n)
		ev.data = C.GoBytes(unsafe.Pointer(data), C.int(n))
	case C.MSB_EXEC_FAILED:
		ev.failure = &ExecFailedError{
			Kind:    optionalString(C.msb_exec_event_failure_kind(cEvent)),
			Errno:   int(C.msb_exec_event_errno(cEvent)),
			Message: optionalString(C.msb_exec_event_message(cEvent)),
			Stage:   optionalString(C.msb_exec_event_stage(cEvent)),
		}
	case C.MSB_EXEC_STDIN_ERROR:
		ev.stdinErr = &StdinError{
			Errno:   int(C.msb_exec_event_errno(cEvent)),
			Message: optionalString(C.msb_exec_event_message(cEvent)),
		}
	}
	return ev
}

// advanceLocked makes progress on the event stream: it pulls one event, or
// waits for the goroutine that is pulling. Called with p.mu held; returns
// with it held.
func (p *Process) advanceLocked() {
	if p.pulling {
		progress := p.progress
		p.mu.Unlock()
		select {
		case <-progress:
		case <-p.ctx.Done():
		}
		p.mu.Lock()
		return
	}
	p.pulling = true
	p.mu.Unlock()
	ev, err := p.pullOne()
	p.mu.Lock()
	p.pulling = false
	close(p.progress)
	p.progress = make(chan struct{})
	switch {
	case err == io.EOF:
		p.finishLocked(nil)
	case err != nil:
		p.finishLocked(err)
	case ev.kind == C.MSB_EXEC_STARTED:
		p.pid = ev.pid
	case ev.kind == C.MSB_EXEC_STDOUT:
		p.stdout.Write(ev.data)
	case ev.kind == C.MSB_EXEC_STDERR:
		p.stderr.Write(ev.data)
	case ev.kind == C.MSB_EXEC_EXITED:
		p.exitCode = ev.exitCode
		p.finishLocked(nil)
	case ev.kind == C.MSB_EXEC_FAILED:
		p.finishLocked(ev.failure)
	case ev.kind == C.MSB_EXEC_STDIN_ERROR:
		if p.stdinErr == nil {
			p.stdinErr = ev.stdinErr
		}
	}
	if p.finished {
		p.releaseIfIdleLocked()
		p.mu.Lock()
	}
}

// read serves Stdout and Stderr.
func (p *Process) read(stream *bytes.Buffer, b []byte) (int, error) {
	p.mu.Lock()
	for {
		if err := p.ctx.Err(); err != nil {
			p.mu.Unlock()
			return 0, err
		}
		if stream.Len() > 0 || len(b) == 0 {
			n, _ := stream.Read(b)
			p.mu.Unlock()
			return n, nil
		}
		if p.finished {
			err := p.endErr
			p.mu.Unlock()
			if err == nil {
				err = io.EOF
			}
			return 0, err
		}
		p.advanceLocked()
	}
}

type streamReader struct {
	p      *Process
	stream *bytes.Buffer
}

func (r streamReader) Read(b []byte) (int, error) { return r.p.read(r.stream, b) }

// Stdout reads the process's standard output (with a TTY: the terminal's
// output, which includes stderr). It returns io.EOF after the process
// exited and all output was read.
func (p *Process) Stdout() io.Reader { return streamReader{p, &p.stdout} }

// Stderr reads the process's standard error, as Stdout.
func (p *Process) Stderr() io.Reader { return streamReader{p, &p.stderr} }

// Stdin writes to the process's standard input; Close sends end of input.
// Once the guest has reported that it could not write the input into the
// process (agents 0.4.6+; the report arrives with the process's events, so
// it is seen once output or Wait has been read past it), Write and Close
// return that *StdinError.
func (p *Process) Stdin() io.WriteCloser { return stdinWriter{p} }

type stdinWriter struct{ p *Process }

// guestStdinErr is the guest's report that stdin could not be written, if
// one was pulled: once the process stopped taking input, writing more
// would only be lost.
func (p *Process) guestStdinErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdinErr != nil {
		return p.stdinErr
	}
	return nil
}

func (w stdinWriter) Write(b []byte) (int, error) {
	if err := w.p.guestStdinErr(); err != nil {
		return 0, err
	}
	if len(b) == 0 {
		return 0, nil
	}
	err := w.p.withHandle(func(h *C.msb_exec, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		// The library copies the bytes into the socket before returning
		// and keeps no pointer to them.
		return C.msb_exec_write_stdin(h, (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b)), timeout, errOut)
	})
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

func (w stdinWriter) Close() error {
	if err := w.p.guestStdinErr(); err != nil {
		return err
	}
	return w.p.withHandle(func(h *C.msb_exec, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_exec_close_stdin(h, timeout, errOut)
	})
}

var errProcessAborted = &Error{Code: StatusClosed, Message: "the process was killed because its context ended"}

var errProcessReleased = &Error{Code: StatusClosed, Message: "the process has exited or was closed"}

// withHandle runs a short library call on the live handle. Its blocking
// (only while the connection's socket is full) is bounded by ctx's
// deadline (defaultCallTimeout without one), and by the client's Close.
func (p *Process) withHandle(op func(h *C.msb_exec, timeout C.int64_t, errOut **C.msb_error) C.msb_status) error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	p.handleMu.RLock()
	defer p.handleMu.RUnlock()
	if p.handle == nil {
		return errProcessReleased
	}
	var libErr *C.msb_error
	status := op(p.handle, boundedTimeoutMs(p.ctx), &libErr)
	return statusError(status, libErr)
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error {
	return p.withHandle(func(h *C.msb_exec, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_exec_signal(h, C.int32_t(sig), timeout, errOut)
	})
}

// Resize changes the size of the process's terminal (for TTY processes).
func (p *Process) Resize(rows, cols uint16) error {
	return p.withHandle(func(h *C.msb_exec, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_exec_resize(h, C.uint16_t(rows), C.uint16_t(cols), timeout, errOut)
	})
}

// Pid is the guest's process id, or 0 if the start event has not been
// read yet.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// Wait waits for the process to exit and returns its exit code (-1 if it
// was killed by a signal), then releases the process's resources. A
// command the guest could not start gives -1 and an *ExecFailedError
// (agents 0.4.4+; older ones report exit code -1 and no error). Output not
// yet read is kept: Stdout and Stderr still return it after Wait.
func (p *Process) Wait() (int, error) {
	p.mu.Lock()
	for {
		if err := p.ctx.Err(); err != nil {
			p.mu.Unlock()
			return -1, err
		}
		if p.finished {
			code, err := p.exitCode, p.endErr
			p.releaseIfIdleLocked()
			if err != nil {
				return -1, err
			}
			return code, nil
		}
		p.advanceLocked()
	}
}

// Close stops listening to the process and releases its resources; a
// process that is still running is killed. Reads and Wait then return an
// error matching ErrClosed. Close after Wait does nothing.
func (p *Process) Close() error {
	p.mu.Lock()
	running := !p.finished
	p.mu.Unlock()
	if running {
		// Killed before the stream is marked over, so that no puller can
		// release the handle first and leave the process running.
		p.kill()
	}
	p.mu.Lock()
	p.finishLocked(errProcessReleased)
	p.mu.Unlock()
	// Wake a goroutine waiting on the poller so the handle can be freed.
	p.readiness.interrupt()
	p.mu.Lock()
	p.releaseIfIdleLocked()
	return nil
}

// Run runs cmd to completion with its stdin closed and returns its exit
// code and output. A non-zero exit code is not an error.
func (c *Client) Run(ctx context.Context, cmd string, opts *ExecOptions) (*RunResult, error) {
	p, err := c.Exec(ctx, cmd, opts)
	if err != nil {
		return nil, err
	}
	if err := p.Stdin().Close(); err != nil && !errors.Is(err, ErrInvalidArgument) && !errors.Is(err, ErrWrongState) {
		p.Close()
		return nil, err
	}
	// A process that already ended (or never started) refuses the end of
	// its input; Wait says how it ended.
	code, err := p.Wait()
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &RunResult{
		ExitCode: code,
		Stdout:   append([]byte(nil), p.stdout.Bytes()...),
		Stderr:   append([]byte(nil), p.stderr.Bytes()...),
	}, nil
}
