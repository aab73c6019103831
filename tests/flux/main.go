// What Flux's kustomize-controller sees of objects, computed by Flux's own code: kstatus (Flux's fork,
// which its health checks use) and, for kinds named in healthCheckExprs, its CEL status evaluator.
//
// stdin:  {"healthCheckExprs": [{apiVersion, kind, current, failed, inProgress}], "objects": [...]}
// stdout: [{"kstatus": "Current", "message": "...", "cel": "Current"}, ...] (cel is "" when no expression names the kind)
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/kustomize"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
)

type input struct {
	HealthCheckExprs []kustomize.CustomHealthCheck `json:"healthCheckExprs"`
	Objects          []json.RawMessage             `json:"objects"`
}

type result struct {
	KStatus string `json:"kstatus"`
	Message string `json:"message"`
	CEL     string `json:"cel"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run() error {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	evaluators := map[string]*cel.StatusEvaluator{}
	for _, hc := range in.HealthCheckExprs {
		e, err := cel.NewStatusEvaluator(&hc.HealthCheckExpressions)
		if err != nil {
			return fmt.Errorf("healthCheckExprs for %s %s: %w", hc.APIVersion, hc.Kind, err)
		}
		evaluators[hc.APIVersion+"/"+hc.Kind] = e
	}
	out := []result{}
	for _, raw := range in.Objects {
		u := &unstructured.Unstructured{}
		if err := utiljson.Unmarshal(raw, &u.Object); err != nil { // integers as int64, as the API machinery reads them
			return fmt.Errorf("object: %w", err)
		}
		res, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("kstatus of %s: %w", u.GetName(), err)
		}
		r := result{KStatus: res.Status.String(), Message: res.Message}
		if e, ok := evaluators[u.GetAPIVersion()+"/"+u.GetKind()]; ok {
			c, err := e.Evaluate(context.Background(), u)
			if err != nil {
				return fmt.Errorf("healthCheckExprs on %s: %w", u.GetName(), err)
			}
			r.CEL = c.Status.String()
		}
		out = append(out, r)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
