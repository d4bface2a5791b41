//! The end-to-end tests on real `agora` processes, one module per scenario, in one test binary
//! (`e2e`): one link of the whole node instead of one per scenario (52 of them took about a
//! minute of the CI build on 2 cores). Run one scenario with
//! `cargo test -p agora-tests --test e2e attack_backlog::` (build the node first:
//! `cargo build -p agora-node --bin agora`), or the whole suite with `bash scripts/test.sh`,
//! whose nextest runs every test in its own process and runs the seven-node contract scenarios
//! alone (`.config/nextest.toml`). Plain `cargo test` runs the modules' tests side by side in
//! one process; the scenarios that must run alone hold only their own module's lock there.

mod attack_arbitrators;
mod attack_auction_hold;
mod attack_audit;
mod attack_awards;
mod attack_backlog;
mod attack_bitswap;
mod attack_block_time;
mod attack_broken;
mod attack_customer;
mod attack_fleet;
mod attack_floods;
mod attack_free_keys;
mod attack_guest;
mod attack_holds;
mod attack_image;
mod attack_market_flood;
mod attack_provider;
mod attack_radio;
mod attack_replay;
mod attack_smoke;
mod attack_sybil;
mod attack_sync;
mod contract_cost;
mod dashboard_browser;
mod deal_attack;
mod demo_runs;
mod devices_cli;
mod devices_flash;
mod devices_handover;
mod devices_job_restart;
mod devices_rekey;
mod devnet_cli;
mod discovery;
mod doctor;
mod fleet;
mod fleet_after;
mod fleet_restart;
mod fleet_restarts;
mod fleet_upgrade;
mod fleet_variants;
mod handover;
mod hostile_guests;
mod idle_memory;
mod market_cli;
mod market_retry;
mod mempool_flood;
mod metrics;
mod multihost;
mod nat;
mod netlab_selftest;
mod operator_cli;
mod presence_kill;
mod readme_layout;
mod readme_walkthrough;
mod restart_capacity;
mod restart_policy;
mod service_cli;
mod service_deps;
mod shared_port;
mod stateful_handover;
mod storage_cli;
mod storage_fetch;
mod token_file;
mod wan;
