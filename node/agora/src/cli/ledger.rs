//! Ledger commands: `balance`, `transfer`, `faucet`, `ledger status`, `contract list|show`,
//! `earnings`.

use std::path::Path;

use clap::Subcommand;

use agora_api::client::ApiClient;
use agora_api::ledger::{
    BalanceReply, EarningView, FaucetRequest, LedgerStatus, SubmittedReply, TransferRequest,
};

use agora_devnet::output::{print_json, print_table};

/// `agora ledger …`
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Height, committee, last block time, state hash, pending transactions.
    Status,
}

/// `agora contract …`
#[derive(Debug, Subcommand)]
pub enum ContractCommand {
    /// Contracts on the ledger.
    List,
    /// One contract in full.
    Show {
        /// Contract id (hex).
        id: String,
    },
}

fn client(dir: &Path) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::for_data_dir(dir)?)
}

/// `agora balance [ACCOUNT]`
pub async fn balance(dir: &Path, account: Option<&str>, json: bool) -> anyhow::Result<()> {
    let who = account.unwrap_or("me");
    let b: BalanceReply = client(dir)?
        .get(&format!("/v1/ledger/accounts/{who}"))
        .await?;
    if json {
        return print_json(&b);
    }
    println!("account     {}", b.account);
    println!("balance     {}", b.balance);
    println!("locked      {}", b.locked);
    println!("reputation  {}", b.reputation);
    Ok(())
}

/// `agora transfer TO AMOUNT`
pub async fn transfer(dir: &Path, to: &str, amount: u64, json: bool) -> anyhow::Result<()> {
    let req = TransferRequest {
        to: to.to_string(),
        amount,
    };
    let r: SubmittedReply = client(dir)?.post("/v1/ledger/transfer", &req).await?;
    if json {
        return print_json(&r);
    }
    println!("submitted transfer of {amount} to {to} (nonce {})", r.nonce);
    Ok(())
}

/// `agora faucet`
pub async fn faucet(dir: &Path, amount: u64, json: bool) -> anyhow::Result<()> {
    let r: SubmittedReply = client(dir)?
        .post("/v1/ledger/faucet", &FaucetRequest { amount })
        .await?;
    if json {
        return print_json(&r);
    }
    println!("submitted faucet request for {amount} (nonce {})", r.nonce);
    Ok(())
}

/// `agora ledger status`
pub async fn ledger(dir: &Path, cmd: &LedgerCommand, json: bool) -> anyhow::Result<()> {
    let LedgerCommand::Status = cmd;
    let s: LedgerStatus = client(dir)?.get("/v1/ledger/status").await?;
    if json {
        return print_json(&s);
    }
    println!("chain       {}", s.chain_id);
    println!("height      {}", s.height);
    println!(
        "last block  {}",
        s.last_block_at
            .map(|t| format!(
                "{:.1} s ago",
                agora_wire::now_ms().saturating_sub(t) as f64 / 1000.0
            ))
            .unwrap_or_else(|| "none yet".into())
    );
    println!("state hash  {}", s.state_hash);
    let m = &s.mempool_stats;
    println!(
        "mempool     {} pending; {} admitted, {} refused or dropped (`--json` for each reason)",
        s.mempool,
        m.admitted,
        m.lost()
    );
    println!("committee   {} arbitrators", s.committee.len());
    for c in &s.committee {
        let slash = s.arbitrators.iter().find(|a| &a.id == c);
        match slash.and_then(|a| a.slashed) {
            Some(x) => println!(
                "            {c}  slashed {} for equivocating at height {} round {}",
                x.amount, x.height, x.round
            ),
            None => println!("            {c}"),
        }
    }
    Ok(())
}

/// `agora contract list|show`
pub async fn contract(dir: &Path, cmd: &ContractCommand, json: bool) -> anyhow::Result<()> {
    let c = client(dir)?;
    match cmd {
        ContractCommand::List => {
            let list: Vec<serde_json::Value> = c.get("/v1/ledger/contracts").await?;
            if json {
                return print_json(&list);
            }
            let short = |v: &serde_json::Value| -> String {
                v.as_str().unwrap_or_default().chars().take(8).collect()
            };
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    vec![
                        short(&r["id"]),
                        short(&r["customer"]),
                        short(&r["provider"]),
                        r["kind"].as_str().unwrap_or_default().to_string(),
                        r["status"].as_str().unwrap_or_default().to_string(),
                        r["payment"].to_string(),
                        r["paid_to_provider"].to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "CONTRACT", "CUSTOMER", "PROVIDER", "KIND", "STATUS", "PAYMENT", "PAID",
                ],
                &rows,
            );
            Ok(())
        }
        ContractCommand::Show { id } => {
            let v: serde_json::Value = c.get(&format!("/v1/ledger/contracts/{id}")).await?;
            print_json(&v)
        }
    }
}

/// `agora earnings`
pub async fn earnings(dir: &Path, json: bool) -> anyhow::Result<()> {
    let list: Vec<EarningView> = client(dir)?.get("/v1/ledger/earnings").await?;
    if json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.contract.chars().take(8).collect(),
                e.customer.chars().take(8).collect(),
                e.status.clone(),
                e.payment.to_string(),
                e.paid.to_string(),
            ]
        })
        .collect();
    print_table(
        &["CONTRACT", "CUSTOMER", "STATUS", "PAYMENT", "EARNED"],
        &rows,
    );
    println!("total earned: {}", list.iter().map(|e| e.paid).sum::<u64>());
    Ok(())
}
