package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// render builds a kustomization the way `kubectl kustomize` does.
func render(dir string) ([]byte, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, err
	}
	return m.AsYaml()
}

// apply server-side-applies every object of a multi-document YAML stream,
// CRDs first (and waits for them to be served).
func apply(ctx context.Context, cfg *rest.Config, manifests []byte) error {
	return applyOpts(ctx, cfg, manifests, false, nil)
}

// applyOpts is apply; with dryRun the API server validates every object
// (schema, admission) and stores nothing; skip, when set, is asked about
// kinds the API server does not serve (true: leave the object out).
func applyOpts(ctx context.Context, cfg *rest.Config, manifests []byte, dryRun bool, skip func(kind string) bool) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	cached := memory.NewMemCacheClient(dc)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cached)
	objs, err := decodeAll(manifests)
	if err != nil {
		return err
	}
	var crds, rest []*unstructured.Unstructured
	for _, u := range objs {
		if u.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, u)
		} else {
			rest = append(rest, u)
		}
	}
	applyOne := func(u *unstructured.Unstructured) error {
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil && skip != nil && meta.IsNoMatchError(err) && skip(gvk.Kind) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk.Kind, u.GetName(), err)
		}
		body, err := u.MarshalJSON()
		if err != nil {
			return err
		}
		ri := dyn.Resource(m.Resource)
		force := true
		opts := metav1.PatchOptions{FieldManager: "plinth-e2e", Force: &force}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			_, err = ri.Namespace(u.GetNamespace()).Patch(ctx, u.GetName(), types.ApplyPatchType, body, opts)
		} else {
			_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, opts)
		}
		if err != nil {
			return fmt.Errorf("apply %s %s: %w", gvk.Kind, u.GetName(), err)
		}
		return nil
	}
	for _, u := range crds {
		if err := applyOne(u); err != nil {
			return err
		}
	}
	if dryRun {
		for _, u := range rest {
			if err := applyOne(u); err != nil {
				return err
			}
		}
		return nil
	}
	// Wait until the new kinds are served, then apply the rest.
	return wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		cached.Invalidate()
		mapper.Reset()
		for _, u := range rest {
			if err := applyOne(u); err != nil {
				if meta.IsNoMatchError(err) || apierrors.IsNotFound(err) || strings.Contains(err.Error(), "no matches for kind") {
					return false, nil
				}
				return false, err
			}
		}
		return true, nil
	})
}

// decodeAll decodes a multi-document YAML stream (helm's "# Source:"
// comments and empty documents are fine).
func decodeAll(manifests []byte) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for _, doc := range bytes.Split(append([]byte("\n"), manifests...), []byte("\n---")) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			return nil, err
		}
		if len(u.Object) == 0 {
			continue
		}
		out = append(out, u)
	}
	return out, nil
}
