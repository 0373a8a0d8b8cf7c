//! Client commands over the operator's gRPC API, one module per service area:
//! [`conn`] (the operator URL), [`jobs`], [`records`] (datasets, licences), [`ledger`]
//! (deposits, credit lines, balances, transfers, usage), [`bills`] (bills, statements, limits,
//! accounts, licence terms), [`audit`] (offline chain verification and checkpoint export) and [`output`] (printing).
//! Listings print aligned text, or CSV (RFC 4180 quoting) with `--csv`.

pub mod accounts;
pub mod audit;
pub mod bills;
pub mod conn;
pub mod jobs;
pub mod ledger;
pub mod lists;
pub mod output;
pub mod records;
pub mod trade;

#[cfg(test)]
mod golden;

use clap::Subcommand;

pub use jobs::{job_line, watch};
pub use output::fmt_micros;

/// The client commands, flattened into the top level of `tessera`.
// Parsed once per process from the command line; boxing `Job` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Dataset records.
    #[command(subcommand)]
    Dataset(records::DatasetCmd),
    /// Licences and their usage policies.
    #[command(subcommand)]
    Licence(records::LicenceCmd),
    /// Jobs.
    #[command(subcommand)]
    Job(jobs::JobCmd),
    /// Add funds to a buyer's cash (or voucher) account.
    Deposit(ledger::DepositArgs),
    /// Set a buyer's credit line.
    Credit(ledger::CreditArgs),
    /// Ledger balances and transfers, usage events.
    #[command(subcommand)]
    Ledger(ledger::LedgerCmd),
    /// Bills and their lines.
    #[command(subcommand)]
    Bills(bills::BillsCmd),
    /// Provider settlement statements and payouts.
    #[command(subcommand)]
    Statements(bills::StatementsCmd),
    /// Product limits (minimum purchase and freeze amounts).
    #[command(subcommand)]
    Limits(bills::LimitsCmd),
    /// Account status, manual freezes and the platform white list.
    #[command(subcommand)]
    Account(bills::AccountCmd),
    /// Users and their roles.
    #[command(subcommand)]
    User(accounts::UserCmd),
    /// Group membership (recorded by the operator).
    #[command(subcommand)]
    Group(accounts::GroupCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(accounts::TokenCmd),
    /// Parties and their workers' registration tokens.
    #[command(subcommand)]
    Party(accounts::PartyCmd),
    /// The T/AI 123.12 trade flow: register, publish, demand, confirm, settle, deliver.
    #[command(subcommand)]
    Trade(trade::TradeCmd),
}

/// Runs one client command against the operator it names.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Dataset(c) => records::dataset(c).await,
        ClientCommand::Licence(c) => records::licence(c).await,
        ClientCommand::Job(c) => jobs::run(c).await,
        ClientCommand::Deposit(a) => ledger::deposit(a).await,
        ClientCommand::Credit(a) => ledger::credit(a).await,
        ClientCommand::Ledger(c) => ledger::run(c).await,
        ClientCommand::Bills(c) => bills::bills(c).await,
        ClientCommand::Statements(c) => bills::statements(c).await,
        ClientCommand::Limits(c) => bills::limits(c).await,
        ClientCommand::Account(c) => bills::account(c).await,
        ClientCommand::User(c) => accounts::user(c).await,
        ClientCommand::Group(c) => accounts::group(c).await,
        ClientCommand::Token(c) => accounts::token(c).await,
        ClientCommand::Party(c) => accounts::party(c).await,
        ClientCommand::Trade(c) => trade::run(c).await,
    }
}
