package config

import (
	"errors"
	"fmt"
	"time"

	"github.com/aegis-edge/aegis/api/keyage"
	"go.yaml.in/yaml/v3"
)

// decodeRotation reads the rotation: section. Durations take days, as the CLI does
// (`max_key_age: 90d`).
func decodeRotation(v *yaml.Node, r *Rotation) error {
	if v.Kind != yaml.MappingNode {
		return &lineError{line: v.Line, key: "rotation", msg: "want a mapping (max_key_age, keep_old)"}
	}
	var errs []error
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := v.Content[i], v.Content[i+1]
		var d time.Duration
		var err error
		if val.Kind != yaml.ScalarNode {
			err = errors.New("want a duration like 90d or 12h")
		} else if d, err = keyage.Parse(val.Value); err != nil {
			err = fmt.Errorf("%q is not a duration like 90d or 12h", val.Value)
		}
		switch k.Value {
		case "max_key_age":
			r.MaxKeyAge = &d
		case "keep_old":
			r.KeepOld = &d
		default:
			err = errors.New("unknown setting (known: max_key_age, keep_old)")
		}
		if err != nil {
			errs = append(errs, &lineError{line: k.Line, key: "rotation." + k.Value, msg: err.Error()})
		}
	}
	return errors.Join(errs...)
}
