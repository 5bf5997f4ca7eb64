//! A model-based test of wallets: random sequences of deposits, withdrawals, transfers,
//! freezes and unfreezes run through the command service and a simple in-memory model, which
//! must agree after every step; at the end the service's state, a full replay and a cold
//! service (snapshot + tail) must agree too.

use crate::support::TestDb;
use commands::accounts::OpenAccount;
use commands::pg::PgEventStore;
use commands::repo::replay;
use commands::store::EventStore;
use commands::wallets::{Transfer, WalletAction};
use commands::{Actor, CommandError, CommandService, Envelope, Role, ServiceConfig, SystemClock};
use domain::wallet::{Wallet, WalletStatus};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

const N: usize = 4;
const SNAPSHOT_EVERY: i64 = 7;

#[derive(Debug, Clone)]
enum Op {
    Deposit {
        w: usize,
        amount: i64,
    },
    Withdraw {
        w: usize,
        amount: i64,
    },
    Transfer {
        from: usize,
        to: usize,
        amount: i64,
    },
    Freeze {
        w: usize,
    },
    Unfreeze {
        w: usize,
    },
    /// Commands go to the other of two services on the database from now on (its cache may
    /// be stale: appends conflict, reload and retry).
    Switch,
    /// The active service is replaced by a cold one (loads snapshot + tail).
    Restart,
}

fn amount() -> impl Strategy<Value = i64> {
    // Mostly small; a quarter large enough to exceed a balance now and then.
    prop_oneof![3 => 1i64..=10_000, 1 => 10_001i64..=50_000]
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0..N;
    prop_oneof![
        4 => (w.clone(), 1i64..=50_000).prop_map(|(w, amount)| Op::Deposit { w, amount }),
        3 => (w.clone(), amount()).prop_map(|(w, amount)| Op::Withdraw { w, amount }),
        5 => (w.clone(), 1..N, amount())
            .prop_map(|(from, off, amount)| Op::Transfer { from, to: (from + off) % N, amount }),
        1 => (w.clone(), amount()).prop_map(|(w, amount)| Op::Transfer { from: w, to: w, amount }),
        1 => w.clone().prop_map(|w| Op::Freeze { w }),
        1 => w.prop_map(|w| Op::Unfreeze { w }),
        1 => Just(Op::Switch),
        1 => Just(Op::Restart),
    ]
}

#[derive(Debug, Clone, Copy, Default)]
struct ModelWallet {
    balance: i64,
    frozen: bool,
    version: i64,
}

/// What the model expects of a command: success, or the refusal's code.
type Expect = Result<(), &'static str>;

struct Model {
    wallets: [ModelWallet; N],
    deposited: i64,
    withdrawn: i64,
}

impl Model {
    fn new() -> Self {
        let mut wallets = [ModelWallet::default(); N];
        for w in &mut wallets {
            w.version = 1; // WalletOpened
        }
        Self {
            wallets,
            deposited: 0,
            withdrawn: 0,
        }
    }

    /// Applies `op` to the model and returns what the service must answer.
    fn step(&mut self, op: &Op) -> Expect {
        match *op {
            Op::Deposit { w, amount } => {
                // Frozen wallets accept credits.
                let m = &mut self.wallets[w];
                m.balance += amount;
                m.version += 1;
                self.deposited += amount;
                Ok(())
            }
            Op::Withdraw { w, amount } => {
                let m = &mut self.wallets[w];
                if m.frozen {
                    return Err("invalid_state");
                }
                if amount > m.balance {
                    return Err("insufficient_funds");
                }
                m.balance -= amount;
                m.version += 1;
                self.withdrawn += amount;
                Ok(())
            }
            Op::Transfer { from, to, amount } => {
                if from == to {
                    return Err("same_wallet");
                }
                if self.wallets[from].frozen {
                    return Err("invalid_state");
                }
                if amount > self.wallets[from].balance {
                    return Err("insufficient_funds");
                }
                if self.wallets[to].frozen {
                    return Err("invalid_state");
                }
                self.wallets[from].balance -= amount;
                self.wallets[from].version += 1;
                self.wallets[to].balance += amount;
                self.wallets[to].version += 1;
                Ok(())
            }
            Op::Freeze { w } => {
                let m = &mut self.wallets[w];
                if m.frozen {
                    return Err("invalid_state");
                }
                m.frozen = true;
                m.version += 1;
                Ok(())
            }
            Op::Unfreeze { w } => {
                let m = &mut self.wallets[w];
                if !m.frozen {
                    return Err("invalid_state");
                }
                m.frozen = false;
                m.version += 1;
                Ok(())
            }
            Op::Switch | Op::Restart => Ok(()),
        }
    }
}

fn envelope(subject: &str, role: Role) -> Envelope {
    Envelope::new(Actor {
        subject: subject.to_owned(),
        roles: vec![role],
    })
}

fn service(store: Arc<dyn EventStore>) -> CommandService {
    CommandService::new(
        store,
        Arc::new(SystemClock),
        ServiceConfig {
            snapshot_every: SNAPSHOT_EVERY,
            ..Default::default()
        },
    )
}

async fn run(
    svc: &CommandService,
    subjects: &[String],
    wallets: &[Uuid],
    op: &Op,
) -> Result<(), CommandError> {
    let psp = envelope("psp", Role::Payments);
    let admin = envelope("admin", Role::Admin);
    let reference = || format!("ref-{}", Uuid::now_v7());
    match *op {
        Op::Deposit { w, amount } => svc
            .wallet_command(
                &psp,
                wallets[w],
                WalletAction::Deposit {
                    amount,
                    external_ref: reference(),
                },
            )
            .await
            .map(drop),
        Op::Withdraw { w, amount } => svc
            .wallet_command(
                &envelope(&subjects[w], Role::Customer),
                wallets[w],
                WalletAction::Withdraw {
                    amount,
                    external_ref: reference(),
                },
            )
            .await
            .map(drop),
        Op::Transfer { from, to, amount } => svc
            .transfer(
                &envelope(&subjects[from], Role::Customer),
                Transfer {
                    from_wallet: wallets[from],
                    to_wallet: wallets[to],
                    amount,
                    memo: None,
                },
            )
            .await
            .map(drop),
        Op::Freeze { w } => svc
            .wallet_command(
                &admin,
                wallets[w],
                WalletAction::Freeze {
                    reason: "model".into(),
                },
            )
            .await
            .map(drop),
        Op::Unfreeze { w } => svc
            .wallet_command(
                &admin,
                wallets[w],
                WalletAction::Unfreeze {
                    reason: "model".into(),
                },
            )
            .await
            .map(drop),
        Op::Switch | Op::Restart => Ok(()),
    }
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

async fn run_case(db: &TestDb, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store: Arc<dyn EventStore> = PgEventStore::new(db.pool.clone(), 2);
    let mut services = [
        service(store.clone()),
        service(PgEventStore::new(db.pool.clone(), 1)),
    ];
    let mut active = 0;
    let mut refusals = 0usize;
    let admin = envelope("admin", Role::Admin);

    // Fresh customers and wallets for every case.
    let case = Uuid::now_v7().simple().to_string();
    let subjects: Vec<String> = (0..N).map(|i| format!("sm-{case}-{i}")).collect();
    let mut wallets = Vec::new();
    let svc = &services[0];
    for sub in &subjects {
        let env = envelope(sub, Role::Customer);
        let input = OpenAccount {
            subject: None,
            email: format!("{sub}@example.com"),
            display_name: sub.clone(),
            birth_date: None,
            country: None,
        };
        svc.open_account(&env, input)
            .await
            .map_err(|e| fail(format!("open account: {e}")))?;
        let w = svc
            .open_wallet(&env, "EUR", None)
            .await
            .map_err(|e| fail(format!("open wallet: {e}")))?;
        wallets.push(w.id);
    }

    let mut model = Model::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Switch => active = 1 - active,
            Op::Restart => services[active] = service(PgEventStore::new(db.pool.clone(), 1)),
            _ => {}
        }
        let svc = &services[active];
        let expected = model.step(op);
        if expected.is_err() {
            refusals += 1;
        }
        let actual = run(svc, &subjects, &wallets, op).await;
        match (&expected, &actual) {
            (Ok(()), Ok(())) => {}
            (Err(code), Err(CommandError::Refused(r))) => {
                prop_assert_eq!(
                    r.code.as_str(),
                    *code,
                    "step {}: {:?} refused for the wrong reason",
                    i,
                    op
                );
                prop_assert_eq!(r.status, 422, "step {}: {:?}", i, op);
            }
            _ => {
                return Err(fail(format!("step {i}: {op:?}: the model expects {expected:?}, the service answered {actual:?}")));
            }
        }
        let mut total = 0;
        for (k, w) in wallets.iter().enumerate() {
            let got = svc
                .get_wallet(&admin, *w)
                .await
                .map_err(|e| fail(format!("step {i}: get wallet {k}: {e}")))?;
            let m = model.wallets[k];
            prop_assert!(
                got.state.available() >= 0,
                "step {}: wallet {} available < 0: {:?}",
                i,
                k,
                got.state
            );
            prop_assert_eq!(
                got.state.balance,
                m.balance,
                "step {}: {:?}: balance of wallet {}",
                i,
                op,
                k
            );
            let status = if m.frozen {
                WalletStatus::Frozen
            } else {
                WalletStatus::Active
            };
            prop_assert_eq!(
                got.state.status,
                status,
                "step {}: {:?}: status of wallet {}",
                i,
                op,
                k
            );
            prop_assert_eq!(
                got.version,
                m.version,
                "step {}: {:?}: version of wallet {}",
                i,
                op,
                k
            );
            total += got.state.balance;
        }
        prop_assert_eq!(
            total,
            model.deposited - model.withdrawn,
            "step {}: conservation",
            i
        );
    }

    // The three ways to know a wallet agree: full replay, the service's slot, a cold service.
    let svc = &services[active];
    let cold = service(PgEventStore::new(db.pool.clone(), 1));
    for (k, w) in wallets.iter().enumerate() {
        let full = replay::<Wallet>(store.as_ref(), *w, i64::MAX)
            .await
            .map_err(|e| fail(format!("replay wallet {k}: {e}")))?;
        let held = svc
            .get_wallet(&admin, *w)
            .await
            .map_err(|e| fail(format!("get wallet {k}: {e}")))?;
        let fresh = cold
            .get_wallet(&admin, *w)
            .await
            .map_err(|e| fail(format!("cold get wallet {k}: {e}")))?;
        prop_assert_eq!(
            (full.version, &full.state),
            (held.version, &held.state),
            "wallet {}: replay vs service",
            k
        );
        prop_assert_eq!(
            (full.version, &full.state),
            (fresh.version, &fresh.state),
            "wallet {}: replay vs cold",
            k
        );
        let snapshot: Option<i64> =
            sqlx::query_scalar("SELECT version FROM snapshots WHERE stream_id = $1")
                .bind(*w)
                .fetch_optional(&db.pool)
                .await
                .map_err(|e| fail(format!("snapshot: {e}")))?;
        let expected = (full.version / SNAPSHOT_EVERY) * SNAPSHOT_EVERY;
        prop_assert_eq!(
            snapshot.unwrap_or(0),
            expected,
            "wallet {}: the latest snapshot is at the last multiple of {} passed",
            k,
            SNAPSHOT_EVERY
        );
    }
    REFUSALS.fetch_add(refusals, Ordering::SeqCst);
    STEPS.fetch_add(ops.len(), Ordering::SeqCst);
    Ok(())
}

static REFUSALS: AtomicUsize = AtomicUsize::new(0);
static STEPS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn wallets_agree_with_a_simple_model_step_by_step() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a runtime");
    let db = rt.block_on(TestDb::with_pool_size(8));
    let config = ProptestConfig {
        // PROPTEST_CASES=500 for a longer hunt.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(24),
        failure_persistence: None,
        max_shrink_iters: 100,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let cases = AtomicUsize::new(0);
    let result = runner.run(&vec(op(), 30..=60), |ops| {
        cases.fetch_add(1, Ordering::SeqCst);
        rt.block_on(run_case(&db, ops))
    });
    println!(
        "state machine: {} cases (with shrinking), {} steps of which {} refused by the rules, in {:?}",
        cases.load(Ordering::SeqCst),
        STEPS.load(Ordering::SeqCst),
        REFUSALS.load(Ordering::SeqCst),
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    drop(db);
}
