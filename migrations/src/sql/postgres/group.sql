-- Casdoor's `group` table as xorm creates it; spec casdoor-schema-and-sync.md, Appendix B (PostgreSQL).
-- Kept verbatim: syncerd creates it only where it is missing and never alters an existing one.
CREATE TABLE IF NOT EXISTS "group" (
  "owner" VARCHAR(100) NOT NULL,
  "name" VARCHAR(100) NOT NULL,
  "created_time" VARCHAR(100) NULL,
  "updated_time" VARCHAR(100) NULL,
  "display_name" VARCHAR(100) NULL,
  "manager" VARCHAR(100) NULL,
  "contact_email" VARCHAR(100) NULL,
  "type" VARCHAR(100) NULL,
  "parent_id" VARCHAR(100) NULL,
  "is_top_group" BOOL NULL,
  "title" VARCHAR(255) NULL,
  "key" VARCHAR(255) NULL,
  "children" TEXT NULL,
  "is_enabled" BOOL NULL,
  "gid_number" INTEGER NULL,
  "properties" TEXT NULL,
  PRIMARY KEY ( "owner","name" )
);
CREATE UNIQUE INDEX "UQE_group_name" ON "group" ("name");
CREATE INDEX "IDX_group_gid_number" ON "group" ("gid_number");
