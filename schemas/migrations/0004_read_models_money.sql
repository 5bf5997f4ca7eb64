-- The money read models: accounts, wallets with their ledger and transfers, and the platform
-- totals behind the conservation check. Written only by their projectors (`accounts`,
-- `wallets`, `stats`), in the transaction that moves the projector's checkpoint.
--
-- Every column is derived from the events alone (times are the events' `occurred_at`, never
-- now()), with no serial columns, defaults or foreign keys, so that a rebuild from position 0
-- into tables created `LIKE` these yields the same rows (`EXCEPT ALL` finds none).

-- One row per account (projector `accounts`). Personal fields are blanked by
-- PersonalDataErased.
CREATE TABLE accounts (
    id                    uuid PRIMARY KEY,
    subject               text NOT NULL,
    email                 text,
    display_name          text,
    birth_date            date,
    country               text,
    preferences           jsonb NOT NULL,
    kyc_status            text NOT NULL,
    status                text NOT NULL,
    personal_data_erased  boolean NOT NULL,
    -- The stream version and global position of the account's last event.
    version               bigint NOT NULL,
    position              bigint NOT NULL,
    opened_at             timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    closed_at             timestamptz
);

-- One row per wallet (projector `wallets`); `available = balance - held`.
CREATE TABLE wallets (
    id          uuid PRIMARY KEY,
    owner       uuid NOT NULL,
    currency    text NOT NULL,
    balance     bigint NOT NULL,
    held        bigint NOT NULL,
    available   bigint NOT NULL,
    status      text NOT NULL,
    version     bigint NOT NULL,
    position    bigint NOT NULL,
    opened_at   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- GET /v1/wallets?owner=: an owner's wallets in the order they were opened (ids are UUIDv7).
CREATE INDEX wallets_owner ON wallets (owner, id);

-- One row per money movement of a wallet (projector `wallets`), append-only. `amount` is
-- signed (credits positive, debits negative) and `balance_after` is the running balance, so
-- the newest entry's `balance_after` is the wallet's balance. The primary key serves the
-- ledger's keyset pages (newest first, by position).
CREATE TABLE wallet_ledger (
    wallet_id      uuid NOT NULL,
    position       bigint NOT NULL,
    version        bigint NOT NULL,
    at             timestamptz NOT NULL,
    kind           text NOT NULL,
    amount         bigint NOT NULL,
    balance_after  bigint NOT NULL,
    -- The other wallet of a transfer.
    counterparty   uuid,
    -- The transfer id, the provider's external reference, or the order, escrow or pot.
    reference      text,
    PRIMARY KEY (wallet_id, position)
);

-- One row per transfer (projector `wallets`) with both legs; each leg comes from its own
-- wallet stream, and whichever is applied first creates the row.
CREATE TABLE transfers (
    id                  uuid PRIMARY KEY,
    from_wallet         uuid NOT NULL,
    to_wallet           uuid NOT NULL,
    currency            text NOT NULL,
    amount              bigint NOT NULL,
    memo                text,
    sent_position       bigint,
    sent_version        bigint,
    sent_at             timestamptz,
    from_balance_after  bigint,
    received_position   bigint,
    received_version    bigint,
    received_at         timestamptz,
    to_balance_after    bigint
);

-- Platform totals per currency (projector `stats`), in numeric: sums over every wallet,
-- escrow and pot may exceed bigint. Conservation: balances + escrowed + in_pots =
-- deposits - withdrawals. A row only ever holds whole transactions of the log.
CREATE TABLE platform_totals (
    currency     text PRIMARY KEY,
    deposits     numeric NOT NULL,
    withdrawals  numeric NOT NULL,
    balances     numeric NOT NULL,
    escrowed     numeric NOT NULL,
    in_pots      numeric NOT NULL
);

-- What a transaction cut by a batch boundary has contributed so far (projector `stats`): added
-- to `platform_totals` once the transaction's last event is applied, so the totals never show
-- half a money move.
CREATE TABLE platform_totals_pending (
    currency     text PRIMARY KEY,
    tx           bigint NOT NULL,
    deposits     numeric NOT NULL,
    withdrawals  numeric NOT NULL,
    balances     numeric NOT NULL,
    escrowed     numeric NOT NULL,
    in_pots      numeric NOT NULL
);

-- The currency of every wallet, escrow and pot (projector `stats`), from its opening event.
CREATE TABLE stream_currencies (
    stream_id  uuid PRIMARY KEY,
    currency   text NOT NULL
);
