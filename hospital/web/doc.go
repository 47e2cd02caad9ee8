// Package web is the message hospital's web UI and JSON API: groups of dead
// letters sorted by what is failing now, each group's letters, each
// letter's envelope, payload, trace and history, and buttons to replay or
// purge a group or a letter, each behind a confirmation page that says
// exactly what will happen.
//
// Pages are rendered on the server with html/template (every value is
// escaped), from templates embedded in the binary; the UI runs no
// JavaScript at all, so its Content-Security-Policy allows none. Access is
// by a token (Config.Token), sent as "Authorization: Bearer <token>", as
// the password of HTTP basic auth (the user name is the actor in the
// audit), or typed once into the login form, which sets an HttpOnly,
// SameSite=Strict cookie holding a random session id (never the token).
// Every state-changing request passes net/http.CrossOriginProtection and,
// unless it carries a bearer token, a per-session CSRF token; every replay
// and purge is written to the store's audit table with who did it.
//
// New returns an http.Handler; antidote hospital serve listens with it.
//
// # Usage
//
//	store, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{URL: storeURL})
//	...
//	h, err := web.New(web.Config{
//		Store:     store,
//		Publisher: b.Publisher, // replays; nil: browse and purge only
//		Token:     os.Getenv("ANTIDOTE_HOSPITAL_TOKEN"),
//	})
//	...
//	err = http.ListenAndServe("127.0.0.1:8080", h)
//
// Beside the pages the handler serves a JSON API (GET /api/groups,
// /api/groups/{fingerprint}/letters, /api/letters/{id}; the APIGroups,
// APIGroup and APILetter types) and, with a Registerer that is also a
// prometheus.Gatherer, /metrics with per-group gauges.
//
// # Defaults
//
// Token empty lets every request in as "anonymous": only for a server on
// loopback (antidote hospital serve refuses anything else); a token has at
// least MinTokenLength (16) characters. Replays at most 100 per second
// (ReplayRate); logins last 12 hours (SessionTTL); metrics for the 100
// groups with the most dead letters (MetricsGroups); payloads shown up to
// PayloadLimit (64 KiB) before a "show all" link. A canary replay waits 30s for a relapse
// (CanaryQuiet) and 5 minutes at most for its outcome (CanaryTimeout).
//
// # See also
//
// Package hospital has the store interface, ingest and the treatments the
// buttons run; pgstore.HospitalStore is the PostgreSQL store; `antidote
// hospital ingest` and `antidote hospital serve` run both as services.
// SECURITY.md says how to report a vulnerability in it.
package web
