package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// writeJSON prints v as indented JSON (one object; event streams call it per event).
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeList prints a listing the one way every list command does: with -o json, one
// object {key: [items as toJSON makes them]}; else a table of header and one row per
// item. Empty cells should be "-" (see orDash) so columns stay aligned for awk.
func writeList[P, J any](w io.Writer, out, key string, items []P, toJSON func(P) J, header string, row func(P) []string) error {
	if out == "json" {
		list := make([]J, 0, len(items))
		for _, it := range items {
			list = append(list, toJSON(it))
		}
		return writeJSON(w, map[string][]J{key: list})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, it := range items {
		fmt.Fprintln(tw, strings.Join(row(it), "\t"))
	}
	return tw.Flush()
}

// plural is "1 host", "0 hosts", "2 hosts".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
