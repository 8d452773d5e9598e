package msbagent

/*
#include <microsandbox_agent.h>
*/
import "C"

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"syscall"
)

// Status is a libmicrosandbox_agent status code. Negative values are
// errors; the non-negative ones never reach callers of this package as
// errors.
type Status int32

// The library's status codes (MSB_* in microsandbox_agent.h).
const (
	StatusOK              Status = C.MSB_OK
	StatusNothingYet      Status = C.MSB_NOTHING_YET
	StatusEnded           Status = C.MSB_ENDED
	StatusInvalidArgument Status = C.MSB_ERR_INVALID_ARGUMENT
	StatusNullPointer     Status = C.MSB_ERR_NULL_POINTER
	StatusInvalidUTF8     Status = C.MSB_ERR_INVALID_UTF8
	StatusTooLarge        Status = C.MSB_ERR_TOO_LARGE
	StatusNotFound        Status = C.MSB_ERR_NOT_FOUND
	StatusIO              Status = C.MSB_ERR_IO
	StatusTimeout         Status = C.MSB_ERR_TIMEOUT
	StatusHandshake       Status = C.MSB_ERR_HANDSHAKE
	StatusClosed          Status = C.MSB_ERR_CLOSED
	StatusProtocol        Status = C.MSB_ERR_PROTOCOL
	StatusIDUnavailable   Status = C.MSB_ERR_ID_UNAVAILABLE
	StatusGuest           Status = C.MSB_ERR_GUEST
	StatusPanic           Status = C.MSB_ERR_PANIC
	StatusWrongState      Status = C.MSB_ERR_WRONG_STATE
	StatusUnsupported     Status = C.MSB_ERR_UNSUPPORTED
	StatusRelayBusy       Status = C.MSB_ERR_RELAY_BUSY
	StatusIDsExhausted    Status = C.MSB_ERR_IDS_EXHAUSTED
	StatusExecFailed      Status = C.MSB_ERR_EXEC_FAILED
	StatusAgent           Status = C.MSB_ERR_AGENT
	StatusPermission      Status = C.MSB_ERR_PERMISSION
	StatusExists          Status = C.MSB_ERR_EXISTS
	StatusStreamOverflow  Status = C.MSB_ERR_STREAM_OVERFLOW
)

// String is the library's static description of the code.
func (s Status) String() string {
	return C.GoString(C.msb_status_str(C.msb_status(s)))
}

// Error is a failure reported by the library (or refused by this package
// before reaching it): the status code and the detailed message.
type Error struct {
	Code    Status
	Message string
	// errno is the guest's errno behind a guest failure (Linux numbers:
	// ENOENT 2, EACCES 13, EEXIST 17, ...), 0 when there is none.
	errno int
}

// fromGuest reports whether the guest reported this failure, whatever code
// the library gave it (a missing file is StatusNotFound, yet the guest's;
// StatusNotFound without an errno is the library's: no relay there).
func (e *Error) fromGuest() bool {
	switch e.Code {
	case StatusGuest, StatusPermission, StatusExists:
		return true
	case StatusNotFound:
		return e.errno != 0
	}
	return false
}

// Errno is the guest's errno (such as 2 for ENOENT) when the guest reported
// one for a failed filesystem call, else 0.
func (e *Error) Errno() int { return e.errno }

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("msbagent: %s (status %d)", e.Code, int32(e.Code))
	}
	return fmt.Sprintf("msbagent: %s (status %d)", e.Message, int32(e.Code))
}

// Is reports whether target is an *Error with the same code (a target with
// a message must match the message too, so the sentinels, which have none,
// match every error of their code). A library timeout also matches
// context.DeadlineExceeded, so callers can test one condition for both
// kinds of deadline.
//
// StatusClosed also matches fs.ErrClosed, as a closed *os.File's errors do,
// and an error carrying the guest's errno matches that syscall.Errno (the
// guest is Linux: the numbers are Linux's).
// The guest's filesystem failures also match the io/fs sentinels, as the
// os package's errors do: fs.ErrNotExist (StatusNotFound), fs.ErrPermission
// (StatusPermission) and fs.ErrExist (StatusExists); and they keep matching
// ErrGuest whichever of these codes they carry.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code == StatusTimeout
	case fs.ErrNotExist:
		return e.Code == StatusNotFound || e.errno == int(syscall.ENOENT)
	case fs.ErrPermission:
		return e.Code == StatusPermission || e.errno == int(syscall.EACCES) || e.errno == int(syscall.EPERM)
	case fs.ErrExist:
		return e.Code == StatusExists || e.errno == int(syscall.EEXIST)
	case fs.ErrClosed:
		return e.Code == StatusClosed
	}
	if errno, ok := target.(syscall.Errno); ok {
		return e.errno != 0 && int(errno) == e.errno
	}
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	if t == ErrGuest && e.fromGuest() {
		return true
	}
	return t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
}

// Sentinels for errors.Is: each matches every *Error of its code.
var (
	ErrInvalidArgument = &Error{Code: StatusInvalidArgument}
	ErrNullPointer     = &Error{Code: StatusNullPointer}
	ErrInvalidUTF8     = &Error{Code: StatusInvalidUTF8}
	ErrTooLarge        = &Error{Code: StatusTooLarge}
	// ErrNotFound: no relay at the socket path, no sandbox of that name, or
	// (then also matching ErrGuest and fs.ErrNotExist) no such guest file.
	ErrNotFound  = &Error{Code: StatusNotFound}
	ErrIO        = &Error{Code: StatusIO}
	ErrTimeout   = &Error{Code: StatusTimeout}
	ErrHandshake = &Error{Code: StatusHandshake}
	// ErrClosed: the client (or the process handle) is closed.
	ErrClosed        = &Error{Code: StatusClosed}
	ErrProtocol      = &Error{Code: StatusProtocol}
	ErrIDUnavailable = &Error{Code: StatusIDUnavailable}
	// ErrGuest: the guest reported a failure; Message is the guest's text.
	ErrGuest      = &Error{Code: StatusGuest}
	ErrPanic      = &Error{Code: StatusPanic}
	ErrWrongState = &Error{Code: StatusWrongState}
	// ErrUnsupported: the sandbox's protocol generation lacks the call
	// (Message names what it needs and what the sandbox speaks).
	ErrUnsupported = &Error{Code: StatusUnsupported}
	// ErrRelayBusy: the relay hung up before the handshake began, because
	// all of its client slots were taken or the guest stalled; retry later.
	ErrRelayBusy = &Error{Code: StatusRelayBusy}
	// ErrIDsExhausted: every correlation id of the connection is in use;
	// reconnect.
	ErrIDsExhausted = &Error{Code: StatusIDsExhausted}
	// ErrExecFailed: the guest could not start a command; the error is an
	// *ExecFailedError.
	ErrExecFailed = &Error{Code: StatusExecFailed}
	// ErrAgent: the agent or relay answered with an error of its own; the
	// error is an *AgentError.
	ErrAgent = &Error{Code: StatusAgent}
	// ErrPermission and ErrExists are the guest's EACCES/EPERM and EEXIST.
	// They also match fs.ErrPermission and fs.ErrExist, which are the
	// better sentinels to test.
	ErrPermission = &Error{Code: StatusPermission}
	ErrExists     = &Error{Code: StatusExists}
	// ErrStreamOverflow: a stream's unread data passed its bound; that
	// stream failed (its process was killed), the connection lives.
	ErrStreamOverflow = &Error{Code: StatusStreamOverflow}
)

// ExecFailedError reports a command the guest could not start (the
// executable is missing, not executable, the directory or user is wrong,
// ...). It unwraps to an *Error with StatusExecFailed, so it matches
// ErrExecFailed, and like os/exec's errors it matches fs.ErrNotExist or
// fs.ErrPermission when Errno says so.
type ExecFailedError struct {
	// Kind is the guest's classification, such as "not_found" ("" when
	// the guest gave none).
	Kind string
	// Errno is the guest's errno, 0 when absent.
	Errno int
	// Message is the guest's description.
	Message string
	// Stage says how far the start got, such as "exec" ("" when absent).
	Stage string
}

func (e *ExecFailedError) Error() string {
	msg := "msbagent: the guest could not start the command"
	if e.Kind != "" {
		msg += " (" + e.Kind + ")"
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Stage != "" {
		msg += " [stage " + e.Stage + "]"
	}
	if e.Errno != 0 {
		msg += fmt.Sprintf(" (errno %d)", e.Errno)
	}
	return msg
}

// Is matches fs.ErrNotExist for ENOENT and fs.ErrPermission for EACCES or
// EPERM.
func (e *ExecFailedError) Is(target error) bool {
	switch target {
	case fs.ErrNotExist:
		return e.Errno == int(syscall.ENOENT)
	case fs.ErrPermission:
		return e.Errno == int(syscall.EACCES) || e.Errno == int(syscall.EPERM)
	}
	return false
}

func (e *ExecFailedError) Unwrap() error {
	return &Error{Code: StatusExecFailed, Message: e.Message, errno: e.Errno}
}

// StdinError is the guest's report that it could not write a process's
// standard input into it (such as EPIPE once the process closed its end).
// It matches the syscall.Errno of Errno.
type StdinError struct {
	Errno   int
	Message string
}

func (e *StdinError) Error() string {
	msg := "msbagent: the guest could not write the process's stdin"
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Errno != 0 {
		msg += fmt.Sprintf(" (errno %d)", e.Errno)
	}
	return msg
}

// Is matches the syscall.Errno of the guest's errno.
func (e *StdinError) Is(target error) bool {
	errno, ok := target.(syscall.Errno)
	return ok && e.Errno != 0 && int(errno) == e.Errno
}

// AgentError is an error the agent or relay answered with instead of a
// result (core.error): Kind classifies it, Message describes it. It
// unwraps to an *Error with StatusAgent, so it matches ErrAgent.
type AgentError struct {
	Kind    string
	Message string
}

func (e *AgentError) Error() string {
	if e.Kind == "" {
		return "msbagent: the agent answered with an error: " + e.Message
	}
	return "msbagent: the agent answered with an error (" + e.Kind + "): " + e.Message
}

func (e *AgentError) Unwrap() error {
	return &Error{Code: StatusAgent, Message: e.Message}
}

// statusError converts a library result into a Go error (nil for the
// non-error codes) and releases the library's error object. The typed
// errors (*ExecFailedError, *AgentError) are built here, so every call
// returns them.
func statusError(status C.msb_status, libErr *C.msb_error) error {
	if libErr == nil {
		if status >= 0 {
			return nil
		}
		return typedError(&Error{Code: Status(status)})
	}
	defer C.msb_error_free(libErr)
	return typedError(&Error{
		Code:    Status(C.msb_error_code(libErr)),
		Message: C.GoString(C.msb_error_message(libErr)),
		errno:   libErrno(libErr),
	})
}

// agentMessagePrefix starts the library's text for a core.error answer,
// "the agent refused the request (KIND): MESSAGE"; the C interface has no
// separate accessor for the kind, so it is taken from there.
const agentMessagePrefix = "the agent refused the request ("

// splitAgentMessage takes the kind out of the library's text for a
// core.error answer; a text of another shape is all message.
func splitAgentMessage(text string) (kind, message string) {
	if !strings.HasPrefix(text, agentMessagePrefix) {
		return "", text
	}
	kind, message, ok := strings.Cut(strings.TrimPrefix(text, agentMessagePrefix), "): ")
	if !ok {
		return "", text
	}
	return kind, message
}

// libErrno is the guest errno the library attached to libErr, 0 when none.
func libErrno(libErr *C.msb_error) int {
	return int(C.msb_error_errno(libErr))
}

func typedError(e *Error) error {
	switch e.Code {
	case StatusExecFailed:
		return &ExecFailedError{Errno: e.errno, Message: e.Message}
	case StatusAgent:
		kind, message := splitAgentMessage(e.Message)
		return &AgentError{Kind: kind, Message: message}
	}
	return e
}
