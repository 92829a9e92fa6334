package main

import (
	"fmt"

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
	var key, user, name string
	add := &cobra.Command{
		Use:   "add --key KEY --user ID [--name NAME]",
		Short: "Register an API key as belonging to a user",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if key == "" || user == "" {
				return fmt.Errorf("%w: --key and --user are required", errUsage)
			}
			rdb, prefix, err := a.userKeys(cmd)
			if err != nil {
				return err
			}
			defer rdb.Close()
			rec, err := transform.AddUser(cmd.Context(), rdb, prefix, key, user, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added key %s… (sha256 %s) for user %s\n", rec.Prefix, rec.KeyHash, rec.User)
			return nil
		},
	}
	add.Flags().StringVar(&key, "key", "", "the API key, in clear (only its hash is stored)")
	add.Flags().StringVar(&user, "user", "", "user id recorded on the key's calls")
	add.Flags().StringVar(&name, "name", "", "display name of the key")

	var rmKey, rmHash string
	rm := &cobra.Command{
		Use:   "rm (--key KEY | --hash SHA256)",
		Short: "Remove an API key (workers forget it within transform.user_cache_ttl)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (rmKey == "") == (rmHash == "") {
				return fmt.Errorf("%w: exactly one of --key or --hash is required", errUsage)
			}
			if rmKey != "" {
				rmHash = schema.HashAPIKey(rmKey)
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
	rm.Flags().StringVar(&rmKey, "key", "", "the API key, in clear")
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
	cmd.AddCommand(add, rm, ls, newUsersReresolveCommand(a))
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
