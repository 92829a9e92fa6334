// Package deploy holds the tests of the deployment files: the Dockerfile, the
// docker compose stack and the Kubernetes manifests. It has no code of its own.
package deploy

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"mvdan.cc/sh/v3/syntax"
)

// goBuild is one `go build` command line: its environment assignments and
// its arguments after `go build`.
type goBuild struct {
	env  map[string]string
	args []string
}

// flags are the build flags without the output path: what decides the binary.
func (b goBuild) flags() []string {
	var out []string
	for i := 0; i < len(b.args); i++ {
		if b.args[i] == "-o" {
			i++
			continue
		}
		out = append(out, b.args[i])
	}
	return out
}

func (b goBuild) flagValue(name string) (string, bool) {
	for i, a := range b.args {
		if a == name && i+1 < len(b.args) {
			return b.args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// parseGoBuilds finds every `go build` in a shell script (parsed as a shell
// would: quotes, continuations, VAR=value prefixes).
func parseGoBuilds(t *testing.T, script string) []goBuild {
	t.Helper()
	f, err := syntax.NewParser().Parse(strings.NewReader(script), "")
	if err != nil {
		t.Fatalf("parse %q: %v", script, err)
	}
	var out []goBuild
	syntax.Walk(f, func(n syntax.Node) bool {
		call, ok := n.(*syntax.CallExpr)
		if !ok || len(call.Args) < 2 {
			return true
		}
		words := make([]string, len(call.Args))
		for i, w := range call.Args {
			words[i] = literal(t, w)
		}
		if words[0] != "go" || words[1] != "build" {
			return true
		}
		b := goBuild{env: map[string]string{}, args: words[2:]}
		for _, a := range call.Assigns {
			v := ""
			if a.Value != nil {
				v = literal(t, a.Value)
			}
			b.env[a.Name.Value] = v
		}
		out = append(out, b)
		return true
	})
	return out
}

// literal is a word's value with quotes removed; variables stay as $NAME.
func literal(t *testing.T, w *syntax.Word) string {
	t.Helper()
	var b strings.Builder
	var walk func(parts []syntax.WordPart)
	walk = func(parts []syntax.WordPart) {
		for _, p := range parts {
			switch p := p.(type) {
			case *syntax.Lit:
				b.WriteString(p.Value)
			case *syntax.SglQuoted:
				b.WriteString(p.Value)
			case *syntax.DblQuoted:
				walk(p.Parts)
			case *syntax.ParamExp:
				b.WriteString("$" + p.Param.Value)
			default:
				t.Fatalf("unsupported shell word part %T in a go build command", p)
			}
		}
	}
	walk(w.Parts)
	return b.String()
}

// dockerfileInstructions joins continuation lines and drops comments.
func dockerfileInstructions(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		out = append(out, cur.String())
		cur.Reset()
	}
	return out
}

var runFlag = regexp.MustCompile(`^--[a-z-]+=\S+\s+`)

// dockerfileBuild is the Dockerfile's go build and the final stage's instructions.
func dockerfileBuild(t *testing.T) (goBuild, []string) {
	t.Helper()
	var builds []goBuild
	var final []string
	for _, ins := range dockerfileInstructions(t) {
		op, rest, _ := strings.Cut(ins, " ")
		switch strings.ToUpper(op) {
		case "FROM":
			final = nil
		case "RUN":
			for runFlag.MatchString(rest) { // --mount=..., --network=...
				rest = runFlag.ReplaceAllString(rest, "")
			}
			builds = append(builds, parseGoBuilds(t, rest)...)
		}
		final = append(final, ins)
	}
	if len(builds) != 1 {
		t.Fatalf("Dockerfile: want exactly one go build in its RUN lines, found %d", len(builds))
	}
	return builds[0], final
}

// taskfileBuild is the go build of the Taskfile's build task (what CI and `go tool task build` run).
func taskfileBuild(t *testing.T) goBuild {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "Taskfile.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tasks map[string]struct {
			Cmds []yaml.Node `yaml:"cmds"`
		} `yaml:"tasks"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatalf("Taskfile.yml: %v", err)
	}
	var builds []goBuild
	for _, c := range tf.Tasks["build"].Cmds {
		cmd := c.Value
		if c.Kind == yaml.MappingNode {
			var m struct {
				Cmd string `yaml:"cmd"`
			}
			if err := c.Decode(&m); err != nil {
				t.Fatal(err)
			}
			cmd = m.Cmd
		}
		// Task variables ({{.VERSION}}) compare like shell variables ($VERSION).
		cmd = regexp.MustCompile(`\{\{\s*\.(\w+)\s*\}\}`).ReplaceAllString(cmd, "$$$1")
		builds = append(builds, parseGoBuilds(t, cmd)...)
	}
	if len(builds) != 1 {
		t.Fatalf("Taskfile.yml: want one go build in the build task, found %d", len(builds))
	}
	return builds[0]
}

// TestDockerfileBuildsWhatCIBuilds: the image's go build uses the Taskfile
// build task's flags (the same ldflags, tags and package), adding only what a
// static, reproducible image needs (CGO_ENABLED=0, -trimpath); the final stage
// is distroless or scratch and runs as a non-root user.
func TestDockerfileBuildsWhatCIBuilds(t *testing.T) {
	docker, final := dockerfileBuild(t)
	task := taskfileBuild(t)

	if docker.env["CGO_ENABLED"] != "0" {
		t.Errorf("Dockerfile go build: CGO_ENABLED=%q, want 0 (static binary)", docker.env["CGO_ENABLED"])
	}
	dflags := docker.flags()
	if !slices.Contains(dflags, "-trimpath") {
		t.Error("Dockerfile go build: -trimpath missing")
	}
	var extra []string
	for _, f := range dflags {
		if f != "-trimpath" {
			extra = append(extra, f)
		}
	}
	if strings.Join(extra, " ") != strings.Join(task.flags(), " ") {
		t.Errorf("Dockerfile go build flags %q (without -trimpath) differ from the Taskfile build task's %q", extra, task.flags())
	}
	for _, f := range []string{"-ldflags", "-tags", "-gcflags"} {
		dv, _ := docker.flagValue(f)
		tv, _ := task.flagValue(f)
		if dv != tv {
			t.Errorf("%s: Dockerfile %q, Taskfile %q", f, dv, tv)
		}
	}

	out, _ := docker.flagValue("-o")
	var from, user, entry string
	copied := false
	for _, ins := range final {
		op, rest, _ := strings.Cut(ins, " ")
		switch strings.ToUpper(op) {
		case "FROM":
			from = rest
		case "USER":
			user = rest
		case "ENTRYPOINT":
			entry = rest
		case "COPY":
			copied = copied || (strings.Contains(rest, "--from=") && strings.Contains(rest, out+" "))
		}
	}
	if !strings.Contains(from, "distroless") && !strings.HasPrefix(from, "scratch") {
		t.Errorf("final stage FROM %q: want distroless or scratch", from)
	}
	if u, _, _ := strings.Cut(user, ":"); user == "" || u == "0" || u == "root" {
		t.Errorf("final stage USER %q: want a non-root user", user)
	}
	if !copied {
		t.Errorf("final stage does not COPY the built binary %s from the build stage", out)
	}
	if !strings.Contains(entry, "/callpipe") {
		t.Errorf("ENTRYPOINT %q does not run /callpipe", entry)
	}
}

var (
	dockerBinOnce sync.Once
	dockerBinPath string
	dockerBinErr  string
)

// dockerBinary runs the Dockerfile's go build (without Docker) once per test
// binary and returns the path of what it built.
func dockerBinary(t *testing.T) string {
	t.Helper()
	dockerBinOnce.Do(func() {
		build, _ := dockerfileBuild(t)
		dir, err := os.MkdirTemp("", "callpipe-docker-build")
		if err != nil {
			dockerBinErr = err.Error()
			return
		}
		dockerBinPath = filepath.Join(dir, "callpipe")
		args := []string{"build"}
		for i := 0; i < len(build.args); i++ {
			if build.args[i] == "-o" {
				args = append(args, "-o", dockerBinPath)
				i++
				continue
			}
			args = append(args, build.args[i])
		}
		// Stop the build (and fail cleanly) before the test binary's own
		// -timeout would panic and leave the go command running.
		ctx := context.Background()
		if dl, ok := t.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, dl.Add(-30*time.Second))
			defer cancel()
		}
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = ".."
		cmd.Env = os.Environ()
		for k, v := range build.env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			dockerBinErr = "go " + strings.Join(args, " ") + ": " + err.Error() + "\n" + string(out)
		}
	})
	if dockerBinErr != "" {
		t.Fatal(dockerBinErr)
	}
	return dockerBinPath
}

// TestDockerfileBinaryIsStaticAndRuns runs the Dockerfile's build command
// without Docker and checks the result: a static ELF (no interpreter, no
// dynamic libraries, as distroless/static needs) that answers `version`.
func TestDockerfileBinaryIsStaticAndRuns(t *testing.T) {
	bin := dockerBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has an ELF interpreter: it is dynamically linked and will not start on distroless/static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v", libs)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !regexp.MustCompile(`^callpipe \S+ \(call-event schema v\d+\)\n$`).Match(out) {
		t.Errorf("callpipe version: %v %q", err, out)
	}
	// -trimpath: no path of the build machine is left in the binary.
	wd, _ := filepath.Abs("..")
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), wd+"/cmd/callpipe") {
		t.Errorf("binary contains the build directory %s: -trimpath not applied", wd)
	}
}
