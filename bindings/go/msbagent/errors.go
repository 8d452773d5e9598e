package msbagent

/*
#include <microsandbox_agent.h>
*/
import "C"

import (
	"context"
	"fmt"
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
	StatusPermission      Status = C.MSB_ERR_PERMISSION
	StatusExists          Status = C.MSB_ERR_EXISTS
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
	// Errno is the guest's errno behind a guest failure (Linux numbers:
	// ENOENT 2, EACCES 13, EEXIST 17, ...), 0 when there is none.
	Errno int
}

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
// kinds of deadline. Every failure the guest reported matches ErrGuest,
// also those whose errno gave them a code of their own (ErrNotFound,
// ErrPermission, ErrExists).
func (e *Error) Is(target error) bool {
	if target == context.DeadlineExceeded {
		return e.Code == StatusTimeout
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

// fromGuest reports whether the guest reported this failure.
func (e *Error) fromGuest() bool {
	switch e.Code {
	case StatusGuest, StatusPermission, StatusExists:
		return true
	}
	return e.Errno != 0
}

// Sentinels for errors.Is: each matches every *Error of its code.
var (
	ErrInvalidArgument = &Error{Code: StatusInvalidArgument}
	ErrNullPointer     = &Error{Code: StatusNullPointer}
	ErrInvalidUTF8     = &Error{Code: StatusInvalidUTF8}
	ErrTooLarge        = &Error{Code: StatusTooLarge}
	// ErrNotFound: no relay at the socket path, no sandbox of that name, or
	// no such path in the guest (then it also matches ErrGuest).
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
	// ErrPermission: the guest refused for lack of permission (EACCES, EPERM).
	ErrPermission = &Error{Code: StatusPermission}
	// ErrExists: the guest found the path already there (EEXIST).
	ErrExists = &Error{Code: StatusExists}
)

// statusError converts a library result into a Go error (nil for the
// non-error codes) and releases the library's error object.
func statusError(status C.msb_status, libErr *C.msb_error) error {
	if libErr == nil {
		if status >= 0 {
			return nil
		}
		return &Error{Code: Status(status)}
	}
	defer C.msb_error_free(libErr)
	return &Error{
		Code:    Status(C.msb_error_code(libErr)),
		Message: C.GoString(C.msb_error_message(libErr)),
		Errno:   int(C.msb_error_errno(libErr)),
	}
}
