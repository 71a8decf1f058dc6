-- Row-level security mode: one shared table; the tenant column defaults to the tenant of the
-- current transaction, and the generated policy (applied at start-up) filters every statement.
CREATE TABLE orders (
    id BIGSERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL DEFAULT NULLIF(current_setting('app.tenant_id', true), ''),
    description TEXT NOT NULL
);
CREATE INDEX orders_tenant_id ON orders (tenant_id, id);
