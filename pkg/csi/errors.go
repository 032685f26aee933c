package csi

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/plinth-dev/plinth/pkg/iolimit"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// codeOf is the one place where plinth's errors become gRPC codes.
func codeOf(err error) codes.Code {
	switch {
	case errors.Is(err, volume.ErrLocked), errors.Is(err, volume.ErrInProgress):
		return codes.Aborted
	case errors.Is(err, pool.ErrInvalid), errors.Is(err, pool.ErrUnsupported), errors.Is(err, iolimit.ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, pool.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, pool.ErrExists):
		return codes.AlreadyExists
	case errors.Is(err, pool.ErrNoSpace):
		return codes.ResourceExhausted
	case errors.Is(err, pool.ErrOutOfRange):
		return codes.OutOfRange
	case errors.Is(err, pool.ErrInUse), errors.Is(err, pool.ErrNotReady), errors.Is(err, pool.ErrDeleting), errors.Is(err, node.ErrNotStaged),
		errors.Is(err, node.ErrPublishedElsewhere), errors.Is(err, node.ErrPathInUse), errors.Is(err, iolimit.ErrPodNotFound),
		errors.Is(err, node.ErrLimitsUnenforced):
		return codes.FailedPrecondition
	case errors.Is(err, mount.ErrOnlineResizeRefused), errors.Is(err, mount.ErrForeignData):
		return codes.FailedPrecondition
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Internal
}

// toStatus maps err to a gRPC status error; nil stays nil.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), err.Error())
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func wrapInt64(v int64) *wrapperspb.Int64Value { return wrapperspb.Int64(v) }
