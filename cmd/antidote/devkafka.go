package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/antidote-mq/antidote/devkafka"
)

func newDevKafkaCmd() *cobra.Command {
	var addr string
	var partitions, brokers int
	var cfg devkafka.Config
	cmd := &cobra.Command{
		Use:   "devkafka",
		Short: "Run a standalone embedded Kafka-protocol broker until interrupted",
		Long: `Runs an in-memory Kafka-protocol broker (franz-go's kfake) that creates
topics on first use. For local development, and for tests in which a consumer
process must die while the broker lives on. Point clients at it with
ANTIDOTE_KAFKA_BROKERS=<addr>. Its data is gone when it stops, unless
--data-dir keeps it: a broker started again on that directory, after a stop
or a kill, resumes with its topics (auto-created ones too), records and
committed offsets. A kill loses nothing acknowledged; a machine crash may
lose the last writes, which are left to the OS page cache as Kafka does.

--brokers N starts a cluster of N brokers on consecutive ports from --addr's
(sharing one copy of the data); --sasl-mechanism with --sasl-user and
--sasl-password makes clients authenticate; --tls-cert and --tls-key serve TLS.

  antidote devkafka --brokers 3 --addr 127.0.0.1:9092
  antidote devkafka --data-dir /tmp/devkafka
  antidote devkafka --sasl-mechanism SCRAM-SHA-512 --sasl-user u --sasl-password p \
      --tls-cert server.pem --tls-key server-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if partitions < 1 {
				return fmt.Errorf("--partitions %d: use 1 or more", partitions)
			}
			if brokers < 1 {
				return fmt.Errorf("--brokers %d: use 1 or more", brokers)
			}
			cfg.Addr, cfg.Partitions, cfg.Brokers = addr, partitions, brokers
			cfg.SASLMechanism = strings.ToUpper(cfg.SASLMechanism)
			k, err := devkafka.Start(cfg)
			if err != nil {
				return err
			}
			defer k.Close()
			var extra string
			if cfg.SASLMechanism != "" {
				extra += ", SASL " + cfg.SASLMechanism + " user " + cfg.SASLUser
			}
			if cfg.TLSCertFile != "" {
				extra += ", TLS"
			}
			if cfg.DataDir != "" {
				extra += ", data in " + cfg.DataDir
			}
			// One parseable line, so scripts can wait for it.
			fmt.Fprintf(cmd.OutOrStdout(), "devkafka listening on %s (partitions %d, brokers %d%s)\n", strings.Join(k.Addrs(), ","), partitions, brokers, extra)
			<-cmd.Context().Done()
			fmt.Fprintln(cmd.OutOrStdout(), "devkafka stopping")
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:9092", "listen address (host:port; port 0 picks a free one)")
	cmd.Flags().IntVar(&partitions, "partitions", 4, "partitions of auto-created topics")
	cmd.Flags().IntVar(&brokers, "brokers", 1, "number of brokers: a cluster on consecutive ports from --addr's")
	cmd.Flags().StringVar(&cfg.SASLMechanism, "sasl-mechanism", "", "require SASL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with --sasl-user and --sasl-password)")
	cmd.Flags().StringVar(&cfg.SASLUser, "sasl-user", "", "the SASL user clients authenticate as")
	cmd.Flags().StringVar(&cfg.SASLPassword, "sasl-password", "", "the SASL user's password")
	cmd.Flags().StringVar(&cfg.TLSCertFile, "tls-cert", "", "serve TLS with this PEM certificate (with --tls-key)")
	cmd.Flags().StringVar(&cfg.TLSKeyFile, "tls-key", "", "PEM private key of --tls-cert")
	cmd.Flags().StringVar(&cfg.DataDir, "data-dir", "", "keep topics, records and committed offsets in this directory, to resume after a restart (default: in memory)")
	return cmd
}
