-- Tenants (security step 2): each task belongs to the tenant of the
-- principal that created it, '' for none. Existing rows were created
-- before tenants existed: they get '', so only principals without a tenant
-- see them. A constant default: adding the column rewrites no row.
ALTER TABLE tasks ADD COLUMN tenant TEXT NOT NULL DEFAULT '';

-- A request_id is unique within its tenant: two tenants may use the same
-- key. Still partial (see 0004): only tasks created with a request_id need
-- the rule. ON CONFLICT and the lookups by request_id use it.
DROP INDEX tasks_request_id;
CREATE UNIQUE INDEX tasks_request_id ON tasks (tenant, request_id)
    WHERE request_id IS NOT NULL;

-- A tenant's ListTasks and WatchTasks read its rows in id (= creation)
-- order, in the query, never filtering a whole table after the fact.
CREATE INDEX tasks_tenant ON tasks (tenant, id);

-- A schedule belongs to its creator's tenant too, and its firings create
-- tasks of that tenant. Existing schedules get '', as existing tasks.
ALTER TABLE schedules ADD COLUMN tenant TEXT NOT NULL DEFAULT '';

-- A tenant's waiting tasks, counted against its quota
-- (auth.tenant_quotas.<tenant>.max_waiting) at each of its creates:
-- only waiting rows have an entry.
CREATE INDEX tasks_tenant_waiting ON tasks (tenant)
    WHERE status IN ('pending', 'retrying');
