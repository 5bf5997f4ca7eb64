//! A proptest state machine across the money flows between wallets, orders, escrows and pots
//! (pot money not yet paid out or refunded counts as held):
//! after every step, money is conserved (wallets + funded escrows + pots = deposits - withdrawals),
//! no `available` is negative, an escrow pays out at most once, and refunds never exceed what
//! was paid.

use crate::support::TestDb;
use chrono::{Duration, Utc};
use commands::accounts::OpenAccount;
use commands::escrows::{EscrowAction, OpenEscrow};
use commands::orders::{OrderAction, PlaceOrder};
use commands::pg::PgEventStore;
use commands::pots::{CreatePot, PotAction};
use commands::wallets::{Transfer, WalletAction};
use commands::{Actor, CommandError, CommandService, Envelope, Role, ServiceConfig, SystemClock};
use domain::escrow::EscrowStatus;
use domain::order::OrderLine;
use domain::pot::Visibility;
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use uuid::Uuid;

const PEOPLE: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Deposit(usize, i64),
    Withdraw(usize, i64),
    Transfer(usize, usize, i64),
    Order {
        buyer: usize,
        seller: usize,
        price: i64,
        escrow: bool,
    },
    Ship(usize),
    Confirm(usize),
    Cancel(usize, bool),
    Refund(usize, i64),
    Escrow {
        buyer: usize,
        seller: usize,
        amount: i64,
    },
    Release(usize),
    RefundEscrow(usize),
    Dispute(usize, bool),
    Resolve(usize, i64),
    Pot {
        owner: usize,
        beneficiary: usize,
    },
    Contribute(usize, usize, i64),
    ClosePot(usize),
    PayOut(usize),
    CancelPot(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..PEOPLE;
    let money = prop_oneof![1..=2_000_i64, 1..=20_000_i64];
    prop_oneof![
        3 => (who.clone(), money.clone()).prop_map(|(w, a)| Op::Deposit(w, a)),
        1 => (who.clone(), money.clone()).prop_map(|(w, a)| Op::Withdraw(w, a)),
        1 => (who.clone(), who.clone(), money.clone()).prop_map(|(f, t, a)| Op::Transfer(f, t, a)),
        3 => (who.clone(), who.clone(), money.clone(), any::<bool>())
            .prop_map(|(buyer, seller, price, escrow)| Op::Order { buyer, seller, price, escrow }),
        1 => (0..6_usize).prop_map(Op::Ship),
        1 => (0..6_usize).prop_map(Op::Confirm),
        1 => (0..6_usize, any::<bool>()).prop_map(|(o, s)| Op::Cancel(o, s)),
        1 => (0..6_usize, money.clone()).prop_map(|(o, a)| Op::Refund(o, a)),
        2 => (who.clone(), who, money.clone()).prop_map(|(buyer, seller, amount)| Op::Escrow { buyer, seller, amount }),
        1 => (0..6_usize).prop_map(Op::Release),
        1 => (0..6_usize).prop_map(Op::RefundEscrow),
        1 => (0..6_usize, any::<bool>()).prop_map(|(e, s)| Op::Dispute(e, s)),
        1 => (0..6_usize, money.clone()).prop_map(|(e, a)| Op::Resolve(e, a)),
        1 => (0..PEOPLE, 0..PEOPLE).prop_map(|(owner, beneficiary)| Op::Pot { owner, beneficiary }),
        2 => (0..6_usize, 0..PEOPLE, money).prop_map(|(p, w, a)| Op::Contribute(p, w, a)),
        1 => (0..6_usize).prop_map(Op::ClosePot),
        1 => (0..6_usize).prop_map(Op::PayOut),
        1 => (0..6_usize).prop_map(Op::CancelPot),
    ]
}

fn env(subject: &str, role: Role) -> Envelope {
    Envelope::new(Actor {
        subject: subject.to_owned(),
        roles: vec![role],
    })
}

struct World {
    svc: Arc<CommandService>,
    db: Arc<TestDb>,
    subjects: Vec<String>,
    accounts: Vec<Uuid>,
    wallets: Vec<Uuid>,
    orders: Vec<(Uuid, usize, usize)>,
    escrows: Vec<(Uuid, usize, usize)>,
    pots: Vec<(Uuid, usize)>,
    net: i64,
}

impl World {
    async fn new(svc: Arc<CommandService>, db: Arc<TestDb>, case: usize) -> World {
        let mut w = World {
            svc,
            db,
            subjects: vec![],
            accounts: vec![],
            wallets: vec![],
            orders: vec![],
            escrows: vec![],
            pots: vec![],
            net: 0,
        };
        for i in 0..PEOPLE {
            let sub = format!("flow-{case}-{i}");
            let open = OpenAccount {
                subject: None,
                email: format!("{sub}@example.com"),
                display_name: sub.clone(),
                birth_date: None,
                country: None,
            };
            let a = w
                .svc
                .open_account(&env(&sub, Role::Customer), open)
                .await
                .expect("account")
                .id;
            let wallet = w
                .svc
                .open_wallet(&env(&sub, Role::Customer), "EUR", None)
                .await
                .expect("wallet")
                .id;
            w.subjects.push(sub);
            w.accounts.push(a);
            w.wallets.push(wallet);
        }
        w
    }

    fn me(&self, i: usize) -> Envelope {
        env(&self.subjects[i], Role::Customer)
    }

    async fn step(&mut self, op: &Op) -> Result<(), CommandError> {
        let svc = self.svc.clone();
        match *op {
            Op::Deposit(w, amount) => {
                let action = WalletAction::Deposit {
                    amount,
                    external_ref: Uuid::now_v7().to_string(),
                };
                svc.wallet_command(&env("psp", Role::Payments), self.wallets[w], action)
                    .await?;
                self.net += amount;
            }
            Op::Withdraw(w, amount) => {
                let action = WalletAction::Withdraw {
                    amount,
                    external_ref: Uuid::now_v7().to_string(),
                };
                svc.wallet_command(&self.me(w), self.wallets[w], action)
                    .await?;
                self.net -= amount;
            }
            Op::Transfer(f, t, amount) => {
                let t = Transfer {
                    from_wallet: self.wallets[f],
                    to_wallet: self.wallets[t],
                    amount,
                    memo: None,
                };
                svc.transfer(&self.me(f), t).await?;
            }
            Op::Order {
                buyer,
                seller,
                price,
                escrow,
            } => {
                let lines = vec![OrderLine {
                    sku: "x".into(),
                    description: "x".into(),
                    quantity: 1,
                    unit_price: price,
                }];
                let place = PlaceOrder {
                    seller: self.accounts[seller],
                    currency: "EUR".into(),
                    lines,
                    use_escrow: escrow,
                };
                let id = svc.place_order(&self.me(buyer), place).await?.id;
                self.orders.push((id, buyer, seller));
                svc.order_command(
                    &self.me(buyer),
                    id,
                    OrderAction::Pay {
                        wallet: self.wallets[buyer],
                    },
                )
                .await?;
            }
            Op::Ship(i) | Op::Confirm(i) | Op::Cancel(i, _) | Op::Refund(i, _) => {
                let Some(&(id, buyer, seller)) = self.orders.get(i) else {
                    return Ok(());
                };
                let (who, action) = match *op {
                    Op::Ship(_) => (
                        seller,
                        OrderAction::Ship {
                            carrier: "c".into(),
                            tracking: "t".into(),
                        },
                    ),
                    Op::Confirm(_) => (buyer, OrderAction::ConfirmDelivery),
                    Op::Cancel(_, by_seller) => (
                        if by_seller { seller } else { buyer },
                        OrderAction::Cancel { reason: "r".into() },
                    ),
                    Op::Refund(_, amount) => (
                        seller,
                        OrderAction::Refund {
                            amount,
                            reason: "r".into(),
                        },
                    ),
                    _ => return Ok(()),
                };
                svc.order_command(&self.me(who), id, action).await?;
            }
            Op::Escrow {
                buyer,
                seller,
                amount,
            } => {
                let open = OpenEscrow {
                    buyer_wallet: self.wallets[buyer],
                    seller: self.accounts[seller],
                    amount,
                    terms: "t".into(),
                    release_after: None,
                    expires_at: Utc::now() + Duration::days(3),
                };
                let id = svc.open_escrow(&self.me(buyer), open).await?.id;
                self.escrows.push((id, buyer, seller));
                svc.escrow_command(&self.me(buyer), id, EscrowAction::Fund)
                    .await?;
            }
            Op::Release(i) | Op::RefundEscrow(i) | Op::Dispute(i, _) | Op::Resolve(i, _) => {
                let Some(&(id, buyer, seller)) = self.escrows.get(i) else {
                    return Ok(());
                };
                match *op {
                    Op::Release(_) => {
                        svc.escrow_command(&self.me(buyer), id, EscrowAction::Release)
                            .await?
                    }
                    Op::RefundEscrow(_) => {
                        svc.escrow_command(&self.me(seller), id, EscrowAction::Refund)
                            .await?
                    }
                    Op::Dispute(_, by_seller) => {
                        let who = if by_seller { seller } else { buyer };
                        svc.escrow_command(
                            &self.me(who),
                            id,
                            EscrowAction::RaiseDispute { reason: "r".into() },
                        )
                        .await?
                    }
                    Op::Resolve(_, to_seller) => {
                        let amount = svc
                            .get_escrow(&env("arb", Role::Arbiter), id)
                            .await?
                            .state
                            .amount;
                        let to_seller = to_seller.min(amount);
                        let action = EscrowAction::Resolve {
                            to_seller,
                            to_buyer: amount - to_seller,
                        };
                        svc.escrow_command(&env("arb", Role::Arbiter), id, action)
                            .await?
                    }
                    _ => return Ok(()),
                };
            }
            Op::Pot { owner, beneficiary } => {
                let create = CreatePot {
                    beneficiary: self.accounts[beneficiary],
                    title: "t".into(),
                    currency: "EUR".into(),
                    target_amount: None,
                    closes_at: Utc::now() + Duration::days(1 + self.pots.len() as i64),
                    visibility: Visibility::Public,
                };
                let id = svc.create_pot(&self.me(owner), create).await?.id;
                self.pots.push((id, owner));
            }
            Op::Contribute(i, who, amount) => {
                let Some(&(id, _)) = self.pots.get(i) else {
                    return Ok(());
                };
                let action = PotAction::Contribute {
                    wallet: self.wallets[who],
                    amount,
                    message: None,
                    anonymous: who == 0,
                };
                svc.pot_command(&self.me(who), id, action).await?;
            }
            Op::ClosePot(i) | Op::PayOut(i) | Op::CancelPot(i) => {
                let Some(&(id, owner)) = self.pots.get(i) else {
                    return Ok(());
                };
                let action = match *op {
                    Op::ClosePot(_) => PotAction::Close,
                    Op::PayOut(_) => PotAction::PayOut,
                    _ => PotAction::Cancel { reason: "r".into() },
                };
                svc.pot_command(&self.me(owner), id, action).await?;
            }
        }
        Ok(())
    }

    /// The invariants, read back from the service and the log.
    async fn check(&self) {
        let admin = env("admin", Role::Admin);
        let mut total = 0;
        let wallets: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT stream_id FROM events WHERE stream_type = 'wallet' AND stream_id = ANY($1) \
             UNION SELECT stream_id FROM claims WHERE scope = 'wallet' AND split_part(key, ':', 1)::uuid = ANY($2)",
        )
        .bind(&self.wallets)
        .bind(&self.accounts)
        .fetch_all(&self.db.pool)
        .await
        .expect("wallets");
        for w in wallets {
            let s = self.svc.get_wallet(&admin, w).await.expect("wallet").state;
            assert!(s.available() >= 0, "negative available in {w}: {s:?}");
            total += s.balance;
        }
        for (id, _, _) in &self.escrows {
            let e = self
                .svc
                .get_escrow(&admin, *id)
                .await
                .expect("escrow")
                .state;
            if e.status == EscrowStatus::Funded {
                total += e.amount;
            }
        }
        for (id, _, _) in &self.orders {
            let o = self.svc.get_order(&admin, *id).await.expect("order").state;
            assert!(
                o.refunded_amount <= o.paid_amount,
                "refunded more than paid: {o:?}"
            );
            if let Some(e) = o.escrow_id {
                let e = self.svc.get_escrow(&admin, e).await.expect("escrow").state;
                if e.status == EscrowStatus::Funded {
                    total += e.amount;
                }
            }
        }
        for (id, _) in &self.pots {
            let p = self.svc.get_pot(&admin, *id).await.expect("pot").pot.state;
            assert!(p.held() >= 0, "a pot holds negative money: {p:?}");
            total += p.held();
        }
        assert_eq!(
            total, self.net,
            "wallets + funded escrows + pot money = deposits - withdrawals"
        );
        let twice: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT stream_id FROM events WHERE event_type IN \
             ('EscrowReleased', 'EscrowRefunded', 'DisputeResolved') GROUP BY stream_id HAVING count(*) > 1) s",
        )
        .fetch_one(&self.db.pool)
        .await
        .expect("payouts");
        assert_eq!(twice, 0, "an escrow paid out twice");
    }
}

#[test]
fn money_is_conserved_across_wallets_orders_escrows_and_pots() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = Arc::new(rt.block_on(TestDb::new()));
    let svc = {
        let _guard = rt.enter();
        let store = PgEventStore::new(db.pool.clone(), 2);
        Arc::new(CommandService::new(
            store,
            Arc::new(SystemClock),
            ServiceConfig {
                snapshot_every: 5,
                ..Default::default()
            },
        ))
    };
    let case = AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in prop::collection::vec(op(), 20..50))| {
        let n = case.fetch_add(1, Ordering::SeqCst);
        rt.block_on(async {
            let mut world = World::new(svc.clone(), db.clone(), n).await;
            let mut ok = 0;
            for op in &ops {
                match world.step(op).await {
                    Ok(()) => ok += 1,
                    Err(CommandError::Refused(r)) => assert!(
                        matches!(r.status, 403 | 404 | 409 | 422),
                        "{op:?} refused oddly: {r:?}"
                    ),
                    Err(CommandError::Invalid(_)) => {}
                    Err(e) => panic!("{op:?} failed: {e}"),
                }
                world.check().await;
            }
            println!("case {n}: {ok} of {} steps succeeded, {} orders, {} escrows, {} pots", ops.len(), world.orders.len(), world.escrows.len(), world.pots.len());
        });
    });
}
