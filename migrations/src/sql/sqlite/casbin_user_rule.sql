-- Casdoor's `casbin_user_rule` table as xorm creates it; spec casdoor-schema-and-sync.md, Appendix C (SQLite).
-- Kept verbatim: syncerd creates it only where it is missing and never alters an existing one.
CREATE TABLE IF NOT EXISTS `casbin_user_rule` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  `ptype` TEXT DEFAULT '' NOT NULL,
  `v0` TEXT DEFAULT '' NOT NULL,
  `v1` TEXT DEFAULT '' NOT NULL,
  `v2` TEXT DEFAULT '' NOT NULL,
  `v3` TEXT DEFAULT '' NOT NULL,
  `v4` TEXT DEFAULT '' NOT NULL,
  `v5` TEXT DEFAULT '' NOT NULL
);
CREATE INDEX `IDX_casbin_user_rule_ptype` ON `casbin_user_rule` (`ptype`);
CREATE INDEX `IDX_casbin_user_rule_v0` ON `casbin_user_rule` (`v0`);
CREATE INDEX `IDX_casbin_user_rule_v1` ON `casbin_user_rule` (`v1`);
CREATE INDEX `IDX_casbin_user_rule_v2` ON `casbin_user_rule` (`v2`);
CREATE INDEX `IDX_casbin_user_rule_v3` ON `casbin_user_rule` (`v3`);
CREATE INDEX `IDX_casbin_user_rule_v4` ON `casbin_user_rule` (`v4`);
CREATE INDEX `IDX_casbin_user_rule_v5` ON `casbin_user_rule` (`v5`);
