// Package msbagent drives a microsandbox sandbox through its agent relay
// (the sandbox's agent.sock), using libmicrosandbox_agent through cgo.
//
// A Client is one connection; it is safe for concurrent use. Exec starts a
// guest process whose output is read through io.Readers; Run runs one to
// completion; ReadFile, WriteFile, Lstat, Stat, ReadDir and friends work on
// the guest's filesystem; Open and Create stream files too large to hold
// in memory, and OpenFile gives positioned access through a guest handle;
// Dial opens a TCP connection from the guest as a net.Conn. Every call
// takes a context.Context, and no library call outlives the Go call that
// made it.
//
// ConnectWithOptions and ConnectSandboxWithOptions take ConnectOptions: the
// memory budget for data received but not read yet, and the Backpressure
// applied when it is full. By default a stream nobody reads for more than
// a second once the budget is full fails with ErrStreamOverflow, and the
// connection carries on.
//
// What a sandbox can do depends on its protocol generation (see
// Client.Generation and Client.Supports): a call it lacks fails with an
// error matching ErrUnsupported.
//
// Errors from the library are *Error values carrying the library's status
// code; compare them with errors.Is against the Err* sentinels, or the io/fs
// ones for the guest's file errors, and use errors.As for the typed ones
// (*ExecFailedError, *AgentError, *StdinError, *fs.PathError).
package msbagent

/*
#cgo pkg-config: microsandbox_agent
#include <stdlib.h>
#include <microsandbox_agent.h>
*/
import "C"

import (
	"context"
	"errors"
	"strings"
	"time"
)

// Version is the version of the libmicrosandbox_agent library in use, as
// "MAJOR.MINOR.PATCH".
func Version() string {
	return C.GoString(C.msb_version())
}

// checkString refuses strings that cannot cross as C strings: a NUL byte
// would silently cut the string short on the C side.
func checkString(what, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return &Error{Code: StatusInvalidArgument, Message: what + " contains a NUL byte"}
	}
	return nil
}

// defaultCallTimeout bounds a library call when ctx has no deadline: no
// call may wait without limit, since a call in progress cannot be
// interrupted (only Client.Close wakes it).
const defaultCallTimeout = 60 * time.Second

// defaultConnectTimeout bounds connecting and the handshake when ctx has
// no deadline.
const defaultConnectTimeout = 10 * time.Second

// firstSlice is how long the first attempt of a retryable call may wait
// before it is re-issued (see callSliced); each later attempt waits twice
// as long as the one before.
const firstSlice = 100 * time.Millisecond

// durationMs is d as the library's millisecond timeout, rounded up and
// never 0 (for pulls 0 means "do not wait at all").
func durationMs(d time.Duration) C.int64_t {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	if ms < 1 {
		ms = 1
	}
	return C.int64_t(ms)
}

// boundedTimeoutMs is the time left until ctx's deadline, or
// defaultCallTimeout without one.
func boundedTimeoutMs(ctx context.Context) C.int64_t {
	if deadline, ok := ctx.Deadline(); ok {
		return durationMs(time.Until(deadline))
	}
	return durationMs(defaultCallTimeout)
}

// How a library call that cannot be interrupted is made to honour ctx.
// Every library call runs on the caller's goroutine, never on one left
// behind: when a call returns, nothing of it is still running.
//
// callOnce is for calls that only send (they block only while the
// connection's socket is full) and for requests that change the guest: a
// change must not be sent twice, and the caller must learn whether it
// happened, so the call is made once and waited for, up to ctx's deadline
// (defaultCallTimeout without one) or Client.Close. A cancellation is
// seen before the call is made, not during it.
func callOnce(ctx context.Context, op func(timeout C.int64_t) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return op(boundedTimeoutMs(ctx))
}

// callSliced is for requests that only read (stat, list, ...), which may
// be sent again: each attempt waits at most a slice (firstSlice, then
// doubling, so a slow answer is eventually waited for long enough), and
// one that times out while ctx is live is re-issued (the library drops
// the late answer). A cancellation is seen within one slice. The attempts
// end at ctx's deadline, or defaultCallTimeout after the start without
// one.
func callSliced(ctx context.Context, op func(timeout C.int64_t) error) error {
	return callSlicedFor(ctx, defaultCallTimeout, op)
}

// callSlicedFor is callSliced with the bound to use when ctx has none.
func callSlicedFor(ctx context.Context, bound time.Duration, op func(timeout C.int64_t) error) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(bound)
	}
	slice := firstSlice
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		wait, last := slice, false
		if left := time.Until(deadline); left <= wait {
			wait, last = left, true
		}
		err := op(durationMs(wait))
		var libErr *Error
		if last || err == nil || !errors.As(err, &libErr) || libErr.Code != StatusTimeout {
			return err
		}
		slice *= 2
	}
}
