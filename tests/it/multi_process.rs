//! Several Chronicle processes on one database: each has its own cache and writer tasks, so
//! they only meet in PostgreSQL. Conflicts must be detected there, retried with a reload of
//! what changed, and never lose or double money.

use crate::support::TestDb;
use commands::accounts::OpenAccount;
use commands::pg::PgEventStore;
use commands::wallets::{Transfer, WalletAction};
use commands::{Actor, CommandError, CommandService, Envelope, Role, ServiceConfig, SystemClock};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn env(subject: &str, role: Role) -> Envelope {
    Envelope::new(Actor {
        subject: subject.to_owned(),
        roles: vec![role],
    })
}

fn service(db: &TestDb) -> Arc<CommandService> {
    let store = PgEventStore::new(db.pool.clone(), 2);
    Arc::new(CommandService::new(
        store,
        Arc::new(SystemClock),
        ServiceConfig::default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_racing_on_the_same_wallets_conserve_money() {
    let db = TestDb::new().await;
    let (a, b) = (service(&db), service(&db));
    let wallets = 6;
    let initial = 100_000_i64;
    let mut ids = Vec::new();
    for i in 0..wallets {
        let sub = format!("racer-{i}");
        let open = OpenAccount {
            subject: None,
            email: format!("{sub}@example.com"),
            display_name: sub.clone(),
            birth_date: None,
            country: None,
        };
        a.open_account(&env(&sub, Role::Customer), open)
            .await
            .expect("open account");
        let w = a
            .open_wallet(&env(&sub, Role::Customer), "EUR", None)
            .await
            .expect("open wallet")
            .id;
        let deposit = WalletAction::Deposit {
            amount: initial,
            external_ref: format!("seed-{i}"),
        };
        a.wallet_command(&env("psp", Role::Payments), w, deposit)
            .await
            .expect("deposit");
        ids.push(w);
    }
    // Both processes transfer among the same few wallets at once; process b starts with a cold
    // cache and process a's cache goes stale with every commit of b, and the other way round.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8_u64 {
        let svc = if t % 2 == 0 { a.clone() } else { b.clone() };
        let ids = ids.clone();
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
            let (mut ok, mut conflicts) = (0, 0);
            for _ in 0..60 {
                let from = rng.gen_range(0..ids.len());
                let to = (from + rng.gen_range(1..ids.len())) % ids.len();
                let transfer = Transfer {
                    from_wallet: ids[from],
                    to_wallet: ids[to],
                    amount: rng.gen_range(1..5_000),
                    memo: None,
                };
                match svc
                    .transfer(&env(&format!("racer-{from}"), Role::Customer), transfer)
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(CommandError::Conflict) => conflicts += 1,
                    Err(CommandError::Refused(r)) if r.code == "insufficient_funds" => {}
                    Err(e) => panic!("unexpected failure: {e}"),
                }
            }
            (ok, conflicts)
        });
    }
    let (mut ok, mut conflicts) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (o, c) = r.expect("task");
        ok += o;
        conflicts += c;
    }
    println!("transfers committed: {ok}, gave up after retries: {conflicts}");
    assert!(ok > 0);

    let sent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'TransferSent'")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(
        sent, ok,
        "every committed transfer has exactly one debit event"
    );

    let mut total = 0;
    for w in &ids {
        // Both processes see the same state once caught up, and it never went negative.
        let admin = env("admin", Role::Admin);
        let sa = a.get_wallet(&admin, *w).await.expect("wallet from a");
        let sb = b.get_wallet(&admin, *w).await.expect("wallet from b");
        assert_eq!(sa.state, sb.state);
        assert_eq!(sa.version, sb.version);
        assert!(sa.state.available() >= 0);
        total += sa.state.balance;
    }
    assert_eq!(total, initial * wallets as i64, "money is conserved");

    let holes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream_id, max(stream_version) AS n, count(*) AS c \
         FROM events GROUP BY stream_id) s WHERE n <> c",
    )
    .fetch_one(&db.pool)
    .await
    .expect("check versions");
    assert_eq!(holes, 0, "every stream's versions run 1..n");
}
