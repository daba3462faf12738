-- Demo table for docker/compose.yml, run once when the Postgres volume is
-- first created. REPLICA IDENTITY FULL lets Sluice attribute deletes to a
-- tenant (tenant_id is not in the primary key).
CREATE TABLE public.orders (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    status text NOT NULL,
    total numeric(12,2) NOT NULL DEFAULT 0
);
ALTER TABLE public.orders REPLICA IDENTITY FULL;
