package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/transform"
)

// newUsersCommand manages the API keys the normalize stage resolves to users.
// Keys are stored in Redis only as their SHA-256 hash (schema.HashAPIKey).
func newUsersCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "users",
		Short: "Register, remove and list API keys and their users (in Redis, keys stored hashed)",
	}
	var key, keyFile, user, name string
	add := &cobra.Command{
		Use:   "add --key-file FILE|- --user ID [--name NAME]",
		Short: "Register an API key as belonging to a user (the key is read from a file or stdin)",
		Long: "add reads the API key from --key-file FILE, or from stdin with --key-file - (the first line;\n" +
			"e.g. `printf %s \"$KEY\" | callpipe users add --key-file - --user alice`), so that the key never\n" +
			"appears in the process list or the shell history. Only its SHA-256 hash is stored.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			apiKey, err := apiKeyArg(cmd, key, keyFile)
			if err != nil {
				return err
			}
			if user == "" {
				return fmt.Errorf("%w: --user is required", errUsage)
			}
			rdb, prefix, err := a.userKeys(cmd)
			if err != nil {
				return err
			}
			defer rdb.Close()
			rec, err := transform.AddUser(cmd.Context(), rdb, prefix, apiKey, user, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added key %s… (sha256 %s) for user %s\n", rec.Prefix, rec.KeyHash, rec.User)
			return nil
		},
	}
	add.Flags().StringVar(&keyFile, "key-file", "", "file holding the API key (first line), - for stdin")
	add.Flags().StringVar(&key, "key", "", "the API key in clear on the command line (visible in ps and shell history; use --key-file)")
	add.Flags().StringVar(&user, "user", "", "user id recorded on the key's calls")
	add.Flags().StringVar(&name, "name", "", "display name of the key")

	var rmKey, rmKeyFile, rmHash string
	rm := &cobra.Command{
		Use:   "rm (--key-file FILE|- | --hash SHA256)",
		Short: "Remove an API key (workers forget it within transform.user_cache_ttl)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rmHash != "" && (rmKey != "" || rmKeyFile != "") {
				return fmt.Errorf("%w: give --hash or the key (--key-file), not both", errUsage)
			}
			if rmHash == "" {
				k, err := apiKeyArg(cmd, rmKey, rmKeyFile)
				if err != nil {
					return fmt.Errorf("%w (or --hash SHA256)", err)
				}
				rmHash = schema.HashAPIKey(k)
			}
			rdb, prefix, err := a.userKeys(cmd)
			if err != nil {
				return err
			}
			defer rdb.Close()
			ok, err := transform.RemoveUser(cmd.Context(), rdb, prefix, rmHash)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("no registered key with sha256 %s", rmHash)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed key sha256 %s\n", rmHash)
			return nil
		},
	}
	rm.Flags().StringVar(&rmKeyFile, "key-file", "", "file holding the API key (first line), - for stdin")
	rm.Flags().StringVar(&rmKey, "key", "", "the API key in clear on the command line (visible in ps and shell history; use --key-file or --hash)")
	rm.Flags().StringVar(&rmHash, "hash", "", "the key's SHA-256 hash, as `users ls` shows it")

	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List registered API keys (prefix and hash only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rdb, prefix, err := a.userKeys(cmd)
			if err != nil {
				return err
			}
			defer rdb.Close()
			recs, err := transform.ListUsers(cmd.Context(), rdb, prefix)
			if err != nil {
				return err
			}
			return transform.WriteUsers(cmd.OutOrStdout(), recs, asJSON)
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line")
	cmd.AddCommand(add, rm, ls)
	return cmd
}

// userKeys opens the Redis holding the registered API keys, under their key
// prefix (transform.user_key_prefix).
func (a *app) userKeys(cmd *cobra.Command) (*redis.Client, string, error) {
	cfg, _, err := a.load(cmd, nil)
	if err != nil {
		return nil, "", err
	}
	rdb, err := newRedis(cfg, 0)
	if err != nil {
		return nil, "", err
	}
	return rdb, cfg.Transform.UserKeyPrefix, nil
}

// apiKeyArg is the API key of --key-file (a file, or stdin for -) or, with a
// warning, of --key: a key on the command line is visible to every user of
// the machine (ps, /proc) and stays in the shell history.
func apiKeyArg(cmd *cobra.Command, key, keyFile string) (string, error) {
	switch {
	case key != "" && keyFile != "":
		return "", fmt.Errorf("%w: give --key-file or --key, not both", errUsage)
	case key != "":
		fmt.Fprintln(cmd.ErrOrStderr(), "warning: --key puts the API key in the process list and the shell history; use --key-file FILE or --key-file - (stdin)")
		return key, nil
	case keyFile == "":
		return "", fmt.Errorf("%w: --key-file FILE (or - for stdin) is required", errUsage)
	}
	var r io.Reader = cmd.InOrStdin()
	name := "stdin"
	if keyFile != "-" {
		f, err := os.Open(keyFile)
		if err != nil {
			return "", fmt.Errorf("%w: --key-file: %w", errUsage, err)
		}
		defer f.Close()
		r, name = f, keyFile
	}
	k, err := readAPIKey(r)
	if err != nil {
		return "", fmt.Errorf("%w: --key-file %s: %w", errUsage, name, err)
	}
	return k, nil
}

// readAPIKey is the first line of r, without surrounding white space; more
// non-blank lines are refused (one key per file).
func readAPIKey(r io.Reader) (string, error) {
	sc := bufio.NewScanner(io.LimitReader(r, 64<<10))
	var key string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
		case key == "":
			key = line
		default:
			return "", errors.New("holds more than one line: give one key")
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if key == "" {
		return "", errors.New("is empty")
	}
	return key, nil
}
