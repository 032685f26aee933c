package debian

import (
	"fmt"
	"sort"
	"strings"
)

// Relation is one alternative of a dependency: a name, and optionally a
// version relation (op one of <<, <=, =, >=, >>).
type Relation struct {
	Name, Op, Version string
}

// parseRelations parses a Depends-style field: clauses separated by
// commas, alternatives by |. Architecture qualifiers (:any) are dropped.
func parseRelations(field string) [][]Relation {
	var out [][]Relation
	for _, clause := range strings.Split(field, ",") {
		clause = strings.TrimSpace(clause)
		if clause == "" {
			continue
		}
		var alts []Relation
		for _, alt := range strings.Split(clause, "|") {
			alt = strings.TrimSpace(alt)
			var r Relation
			name, rest, _ := strings.Cut(alt, "(")
			r.Name = strings.TrimSpace(name)
			if i := strings.IndexByte(r.Name, ':'); i >= 0 {
				r.Name = r.Name[:i]
			}
			if i := strings.IndexAny(r.Name, " ["); i >= 0 {
				r.Name = r.Name[:i]
			}
			if rest != "" {
				rest, _, _ = strings.Cut(rest, ")")
				rest = strings.TrimSpace(rest)
				op := strings.TrimRight(rest[:len(rest)-len(strings.TrimLeft(rest, "<>="))], " ")
				r.Op, r.Version = op, strings.TrimSpace(rest[len(op):])
			}
			alts = append(alts, r)
		}
		out = append(out, alts)
	}
	return out
}

// Resolve returns roots and everything they need through Depends and
// Pre-Depends, sorted by name. A dependency naming an excluded package is
// taken as met (packages that only carry maintainer scripts or a
// package manager's parts, which an image that never runs dpkg does not
// need); of alternatives the first real package that meets the relation
// is taken, else a package that provides the name.
func Resolve(ix *Index, roots, exclude []string) ([]Package, error) {
	excluded := map[string]bool{}
	for _, e := range exclude {
		excluded[e] = true
	}
	chosen := map[string]Package{}
	var visit func(name, from string) error
	visit = func(name, from string) error {
		if _, ok := chosen[name]; ok {
			return nil
		}
		p, ok := ix.Lookup(name)
		if !ok {
			return fmt.Errorf("package %s (needed by %s) is in no suite", name, from)
		}
		chosen[name] = p
		for _, clause := range parseRelations(p.PreDepends + ", " + p.Depends) {
			pick, err := ix.pick(clause, excluded)
			if err != nil {
				return fmt.Errorf("%s %s: %w", p.Name, p.Version, err)
			}
			if pick == "" {
				continue
			}
			if err := visit(pick, p.Name); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range roots {
		if err := visit(r, "the roots"); err != nil {
			return nil, err
		}
	}
	out := make([]Package, 0, len(chosen))
	for _, p := range chosen {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// pick chooses the package that meets one clause; "" when an excluded
// package meets it.
func (ix *Index) pick(clause []Relation, excluded map[string]bool) (string, error) {
	for _, r := range clause {
		if excluded[r.Name] {
			return "", nil
		}
	}
	for _, r := range clause {
		if p, ok := ix.Lookup(r.Name); ok && Satisfies(p.Version, r.Op, r.Version) {
			return p.Name, nil
		}
	}
	for _, r := range clause {
		if r.Op != "" && r.Op != "=" {
			continue
		}
		for _, prov := range ix.provides[r.Name] {
			if excluded[prov] {
				return "", nil
			}
		}
		if provs := ix.provides[r.Name]; len(provs) > 0 {
			return provs[0], nil
		}
	}
	var names []string
	for _, r := range clause {
		names = append(names, strings.TrimSpace(r.Name+" "+r.Op+" "+r.Version))
	}
	return "", fmt.Errorf("no package meets %s", strings.Join(names, " | "))
}
