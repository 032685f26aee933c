package inspect

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/bytesize"
)

// MoveRequest is what `kubectl plinth move` asks.
type MoveRequest struct {
	Namespace, Claim, To string
	Evict                bool
	KeepSourceFor        time.Duration
}

// MoveReport is one move as kubectl plinth prints it.
type MoveReport struct {
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	Claim      string `json:"claim"`
	From       string `json:"from,omitempty"`
	To         string `json:"to"`
	Phase      string `json:"phase"`
	Reason     string `json:"reason,omitempty"`
	Message    string `json:"message,omitempty"`
	BytesDone  int64  `json:"bytesDone"`
	BytesTotal int64  `json:"bytesTotal"`
	Rate       int64  `json:"bytesPerSecond,omitempty"`
	ETASeconds int64  `json:"etaSeconds,omitempty"`
}

func moveReport(m *v1alpha1.PlinthMove) MoveReport {
	phase := string(m.Status.Phase)
	if phase == "" {
		phase = string(v1alpha1.MovePending)
	}
	return MoveReport{Namespace: m.Namespace, Name: m.Name, Claim: m.Spec.Claim, From: m.Status.SourceNode, To: m.Spec.TargetNode,
		Phase: phase, Reason: m.Status.Reason, Message: m.Status.Message, BytesDone: m.Status.BytesDone, BytesTotal: m.Status.BytesTotal,
		Rate: m.Status.BytesPerSecond, ETASeconds: m.Status.ETASeconds}
}

// Line is the report in one line, for a person watching.
func (r MoveReport) Line() string {
	s := fmt.Sprintf("%s/%s %s → %s: %s", r.Namespace, r.Claim, dash(r.From), r.To, r.Phase)
	if r.BytesTotal > 0 && (r.Phase == string(v1alpha1.MoveCopying) || r.Phase == string(v1alpha1.MoveFinalSync)) {
		s += fmt.Sprintf(" %s of %s", bytesize.Format(r.BytesDone), bytesize.Format(r.BytesTotal))
		if r.Rate > 0 {
			s += fmt.Sprintf(" at %s/s, %ds left", bytesize.Format(r.Rate), r.ETASeconds)
		}
	}
	if r.Message != "" {
		s += ": " + r.Message
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Move starts a move of a claim: a PlinthMove named after the claim. A
// finished move of that name is replaced; a running one is an error.
func (c *Client) Move(ctx context.Context, req MoveRequest) (MoveReport, error) {
	moves := c.Plinth.PlinthV1alpha1().PlinthMoves(req.Namespace)
	if old, err := moves.Get(ctx, req.Claim, metav1.GetOptions{}); err == nil {
		if p := old.Status.Phase; p != v1alpha1.MoveDone && p != v1alpha1.MoveFailed {
			return MoveReport{}, fmt.Errorf("a move of claim %s/%s is running (%s, to %s)", req.Namespace, req.Claim, dash(string(p)), old.Spec.TargetNode)
		}
		if old.Status.Phase == v1alpha1.MoveDone && old.Status.DoneTime == nil {
			// Deleting it would remove the source it keeps (keepSourceFor)
			// at once: the copy kept for safety is not thrown away here.
			return MoveReport{}, fmt.Errorf("the last move of claim %s/%s keeps its source on %s for now (keepSourceFor); delete PlinthMove %s/%s to remove that source, then move again",
				req.Namespace, req.Claim, old.Status.SourceNode, old.Namespace, old.Name)
		}
		if err := moves.Delete(ctx, old.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &old.UID}}); err != nil && !apierrors.IsNotFound(err) {
			return MoveReport{}, fmt.Errorf("remove the finished move %s: %w", old.Name, err)
		}
		if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := moves.Get(ctx, old.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			return MoveReport{}, fmt.Errorf("the finished move %s is still being removed: %w", old.Name, err)
		}
	} else if !apierrors.IsNotFound(err) {
		return MoveReport{}, err
	}
	m := &v1alpha1.PlinthMove{
		ObjectMeta: metav1.ObjectMeta{Name: req.Claim, Namespace: req.Namespace},
		Spec:       v1alpha1.MoveSpec{Claim: req.Claim, TargetNode: req.To, Evict: req.Evict},
	}
	if req.KeepSourceFor > 0 {
		m.Spec.KeepSourceFor = &metav1.Duration{Duration: req.KeepSourceFor}
	}
	out, err := moves.Create(ctx, m, metav1.CreateOptions{})
	if err != nil {
		return MoveReport{}, err
	}
	return moveReport(out), nil
}

// WatchMove calls report at each change of move ns/name until it is Done
// (its source removed) or Failed, and returns the last report.
func (c *Client) WatchMove(ctx context.Context, ns, name string, report func(MoveReport)) (MoveReport, error) {
	var last MoveReport
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		m, err := c.Plinth.PlinthV1alpha1().PlinthMoves(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		r := moveReport(m)
		if r != last && report != nil {
			report(r)
		}
		last = r
		return m.Status.Phase == v1alpha1.MoveFailed || (m.Status.Phase == v1alpha1.MoveDone && m.Status.DoneTime != nil), nil
	})
	return last, err
}

// Moves lists the moves of ns ("" for all namespaces).
func (c *Client) Moves(ctx context.Context, ns string) ([]MoveReport, error) {
	list, err := c.Plinth.PlinthV1alpha1().PlinthMoves(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := make([]MoveReport, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, moveReport(&list.Items[i]))
	}
	return out, nil
}
