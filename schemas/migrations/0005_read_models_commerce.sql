-- Read models of the commerce aggregates: orders (with their lines), escrows (with the history
-- of their decisions), pots (with contributions and invitations) and devices.
--
-- Every column is derived from events alone (payloads, `occurred_at`, `actor_sub`,
-- `actor_role`, `stream_version`, `position`), never from now() or randomness, so that a
-- rebuild from position 0 yields the same rows (compared with EXCEPT ALL). No foreign keys:
-- projectors write each table on its own, and rebuilds swap tables one projector at a time.
-- `version` is the aggregate's stream version (the ETag) and `position` the global position of
-- the last event applied to the row.

-- Projector `orders`.
CREATE TABLE orders (
    id               uuid PRIMARY KEY,
    buyer            uuid NOT NULL,
    seller           uuid NOT NULL,
    currency         text NOT NULL,
    total            bigint NOT NULL,
    line_count       integer NOT NULL,
    use_escrow       boolean NOT NULL,
    escrow_id        uuid,
    paid_wallet      uuid,
    paid_amount      bigint NOT NULL,
    refunded_amount  bigint NOT NULL,
    paid_at          timestamptz,
    status           text NOT NULL
        CHECK (status IN ('placed', 'paid', 'shipped', 'delivered', 'cancelled')),
    carrier          text,
    tracking         text,
    cancelled_by     text CHECK (cancelled_by IN ('buyer', 'seller', 'system')),
    cancel_reason    text,
    placed_at        timestamptz NOT NULL,
    shipped_at       timestamptz,
    delivered_at     timestamptz,
    cancelled_at     timestamptz,
    updated_at       timestamptz NOT NULL,
    version          bigint NOT NULL,
    position         bigint NOT NULL
);

-- GET /v1/orders lists newest first (ids are UUIDv7) by buyer or seller; a status filter
-- alone walks the primary key (an index on a column every event changes would slow writes).
CREATE INDEX orders_buyer ON orders (buyer, id);
CREATE INDEX orders_seller ON orders (seller, id);

-- Written once, when the order is placed.
CREATE TABLE order_lines (
    order_id     uuid NOT NULL,
    line_no      integer NOT NULL,
    sku          text NOT NULL,
    description  text NOT NULL,
    quantity     bigint NOT NULL,
    unit_price   bigint NOT NULL,
    amount       bigint NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

-- Projector `escrows`.
CREATE TABLE escrows (
    id                   uuid PRIMARY KEY,
    buyer                uuid NOT NULL,
    buyer_wallet         uuid NOT NULL,
    seller               uuid NOT NULL,
    currency             text NOT NULL,
    amount               bigint NOT NULL,
    terms                text NOT NULL,
    release_after        timestamptz,
    expires_at           timestamptz NOT NULL,
    order_id             uuid,
    status               text NOT NULL
        CHECK (status IN ('opened', 'funded', 'released', 'refunded', 'resolved')),
    dispute_raised_by    text CHECK (dispute_raised_by IN ('buyer', 'seller', 'system')),
    dispute_reason       text,
    dispute_raised_at    timestamptz,
    resolved_to_seller   bigint,
    resolved_to_buyer    bigint,
    opened_at            timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    version              bigint NOT NULL,
    position             bigint NOT NULL
);

-- GET /v1/escrows?party= lists newest first the escrows where the party buys or sells.
CREATE INDEX escrows_buyer ON escrows (buyer, id);
CREATE INDEX escrows_seller ON escrows (seller, id);

-- Every decision on an escrow, one row per event: who (party, subject, role), when, how much.
CREATE TABLE escrow_decisions (
    escrow_id   uuid NOT NULL,
    version     bigint NOT NULL,
    position    bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('opened', 'funded', 'released', 'refunded',
                                              'dispute_raised', 'dispute_resolved')),
    party       text NOT NULL CHECK (party IN ('buyer', 'seller', 'system', 'arbiter')),
    actor_sub   text NOT NULL,
    actor_role  text NOT NULL,
    at          timestamptz NOT NULL,
    amount      bigint,
    to_seller   bigint,
    to_buyer    bigint,
    reason      text,
    PRIMARY KEY (escrow_id, version)
);

-- Projector `pots`.
CREATE TABLE pots (
    id                  uuid PRIMARY KEY,
    owner               uuid NOT NULL,
    beneficiary         uuid NOT NULL,
    title               text NOT NULL,
    currency            text NOT NULL,
    target_amount       bigint,
    closes_at           timestamptz NOT NULL,
    visibility          text NOT NULL CHECK (visibility IN ('public', 'private')),
    status              text NOT NULL
        CHECK (status IN ('open', 'closed', 'paid_out', 'cancelled')),
    -- Contributions not refunded, in minor units.
    raised              bigint NOT NULL,
    paid_out            bigint NOT NULL,
    -- Distinct contributors with a contribution not refunded.
    contributor_count   integer NOT NULL,
    -- Every contribution ever received.
    contribution_count  integer NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    version             bigint NOT NULL,
    position            bigint NOT NULL
);

-- GET /v1/pots sorts by raised (largest first), closes_at (soonest first) or newest first.
CREATE INDEX pots_raised ON pots (raised DESC, id DESC);
CREATE INDEX pots_closes_at ON pots (closes_at, id);

-- Every contribution with its contributor: the projector keeps it; queries hide anonymous
-- contributors from everyone but the contributor, admins and auditors.
CREATE TABLE pot_contributions (
    contribution_id  uuid PRIMARY KEY,
    pot_id           uuid NOT NULL,
    position         bigint NOT NULL,
    contributor      uuid NOT NULL,
    wallet           uuid NOT NULL,
    amount           bigint NOT NULL,
    anonymous        boolean NOT NULL,
    message          text,
    refunded         boolean NOT NULL,
    received_at      timestamptz NOT NULL
);

-- Recent contributions of a pot, newest first.
CREATE INDEX pot_contributions_recent ON pot_contributions (pot_id, position);
-- A contributor's contributions to a pot (contributor counts, private pot readers).
CREATE INDEX pot_contributions_contributor ON pot_contributions (contributor, pot_id);

CREATE TABLE pot_invitations (
    pot_id      uuid NOT NULL,
    account     uuid NOT NULL,
    invited_at  timestamptz NOT NULL,
    position    bigint NOT NULL,
    PRIMARY KEY (pot_id, account)
);

-- Projector `devices`. The credential and its hash are never stored here.
CREATE TABLE devices (
    id                     uuid PRIMARY KEY,
    owner                  uuid NOT NULL,
    serial                 text NOT NULL,
    model                  text NOT NULL,
    firmware_version       text NOT NULL,
    status                 text NOT NULL
        CHECK (status IN ('registered', 'active', 'suspended', 'decommissioned')),
    pending_target_version text,
    pending_artifact_url   text,
    pending_sha256         text,
    pending_scheduled_at   timestamptz,
    last_update_outcome    text CHECK (last_update_outcome IN ('applied', 'failed')),
    last_update_detail     text,
    -- When the device itself last reported (a command it authenticated with its credential).
    last_seen_at           timestamptz,
    registered_at          timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    version                bigint NOT NULL,
    position               bigint NOT NULL
);

-- GET /v1/devices lists newest first by owner or model (status filters the walk).
CREATE INDEX devices_owner ON devices (owner, id);
CREATE INDEX devices_model ON devices (model, id);
