package main

import (
	"fmt"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/tools/amend"
	"github.com/callpipe/callpipe/transform"
)

// newUsersCommand manages the API keys the normalize stage resolves to users.
// Keys are stored in Redis only as their SHA-256 hash (schema.HashAPIKey).
func newUsersCommand(a *app) *cobra.Command {
	var key keyFlags
	var user, name string
	add := &cobra.Command{
		Use:   "add --key-file FILE|- --user ID [--name NAME]",
		Short: "Register an API key as belonging to a user (the key is read from a file or stdin)",
		Long: "add reads the API key from --key-file FILE, or from stdin with --key-file - (the first line;\n" +
			"e.g. `printf %s \"$KEY\" | callpipe users add --key-file - --user alice`), so that the key never\n" +
			"appears in the process list or the shell history. Only its SHA-256 hash is stored.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			apiKey, err := apiKeyArg(cmd, key.key, key.file)
			if err != nil {
				return err
			}
			if user == "" {
				return fmt.Errorf("%w: --user is required", errUsage)
			}
			return a.withUserKeys(cmd, func(rdb *redis.Client, prefix string) error {
				rec, err := transform.AddUser(cmd.Context(), rdb, prefix, apiKey, user, name)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "added key %s… (sha256 %s) for user %s\n", rec.Prefix, rec.KeyHash, rec.User)
				return nil
			})
		},
	}
	key.register(add, "--key-file")
	add.Flags().StringVar(&user, "user", "", "user id recorded on the key's calls")
	add.Flags().StringVar(&name, "name", "", "display name of the key")

	var rmKey keyFlags
	var rmHash string
	rm := &cobra.Command{
		Use:   "rm (--key-file FILE|- | --hash SHA256)",
		Short: "Remove an API key (workers forget it within transform.user_cache_ttl)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rmHash != "" && (rmKey.key != "" || rmKey.file != "") {
				return fmt.Errorf("%w: give --hash or the key (--key-file), not both", errUsage)
			}
			if rmHash == "" {
				k, err := apiKeyArg(cmd, rmKey.key, rmKey.file)
				if err != nil {
					return fmt.Errorf("%w (or --hash SHA256)", err)
				}
				rmHash = schema.HashAPIKey(k)
			}
			return a.withUserKeys(cmd, func(rdb *redis.Client, prefix string) error {
				ok, err := transform.RemoveUser(cmd.Context(), rdb, prefix, rmHash)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("no registered key with sha256 %s", rmHash)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed key sha256 %s\n", rmHash)
				return nil
			})
		},
	}
	rmKey.register(rm, "--key-file or --hash")
	rm.Flags().StringVar(&rmHash, "hash", "", "the key's SHA-256 hash, as `users ls` shows it")

	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List registered API keys (prefix and hash only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withUserKeys(cmd, func(rdb *redis.Client, prefix string) error {
				recs, err := transform.ListUsers(cmd.Context(), rdb, prefix)
				if err != nil {
					return err
				}
				return transform.WriteUsers(cmd.OutOrStdout(), recs, asJSON)
			})
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line")
	return group("users", "Register, remove and list API keys and their users (in Redis, keys stored hashed)",
		add, rm, ls, newUsersReresolveCommand(a))
}

// withUserKeys runs f on the Redis holding the registered API keys, under
// their key prefix (transform.user_key_prefix).
func (a *app) withUserKeys(cmd *cobra.Command, f func(rdb *redis.Client, prefix string) error) error {
	cfg, _, err := a.load(cmd, nil)
	if err != nil {
		return err
	}
	rdb, err := cfg.RedisClient(0)
	if err != nil {
		return err
	}
	defer rdb.Close()
	return f(rdb, cfg.Transform.UserKeyPrefix)
}

// keyFlags are --key-file and --key, where a command reads an API key.
type keyFlags struct{ key, file string }

// register adds the flags to cmd; instead names the flags to use rather than --key.
func (k *keyFlags) register(cmd *cobra.Command, instead string) {
	cmd.Flags().StringVar(&k.file, "key-file", "", "file holding the API key (first line), - for stdin")
	cmd.Flags().StringVar(&k.key, "key", "", "the API key in clear on the command line (visible in ps and shell history; use "+instead+")")
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
	in, err := openInput(cmd, keyFile)
	if err != nil {
		return "", fmt.Errorf("%w: --key-file: %w", errUsage, err)
	}
	defer in.Close()
	k, err := transform.ReadAPIKey(in)
	if err != nil {
		name := keyFile
		if keyFile == "-" {
			name = "stdin"
		}
		return "", fmt.Errorf("%w: --key-file %s: %w", errUsage, name, err)
	}
	return k, nil
}

// newUsersReresolveCommand looks up again the API keys of calls stored with
// user unresolved (Redis was down and the key not cached) and republishes
// the resolved calls (package amend).
func newUsersReresolveCommand(a *app) *cobra.Command {
	var r amendFlags
	cmd := &cobra.Command{
		Use:   "reresolve --from T --to T [--dry-run]",
		Short: "Resolve the users of calls stored as unresolved (during a Redis outage) and re-store them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return r.run(a, cmd, "reresolve", "users reresolve reads the unresolved calls from ClickHouse", func(c *cmdEnv, job amend.Job) error {
				rdb, err := c.cfg.RedisClient(0)
				if err != nil {
					return err
				}
				defer rdb.Close()
				return job.Reresolve(cmd.Context(), transform.NewUserResolver(c.cfg.UserOptions(rdb, c.log)))
			})
		},
	}
	r.register(cmd)
	return cmd
}
