-- Casdoor's `group` table as xorm creates it; spec casdoor-schema-and-sync.md, Appendix C (SQLite).
-- Kept verbatim: syncerd creates it only where it is missing and never alters an existing one.
CREATE TABLE IF NOT EXISTS `group` (
  `owner` TEXT NOT NULL,
  `name` TEXT NOT NULL,
  `created_time` TEXT NULL,
  `updated_time` TEXT NULL,
  `display_name` TEXT NULL,
  `manager` TEXT NULL,
  `contact_email` TEXT NULL,
  `type` TEXT NULL,
  `parent_id` TEXT NULL,
  `is_top_group` INTEGER NULL,
  `title` TEXT NULL,
  `key` TEXT NULL,
  `children` TEXT NULL,
  `is_enabled` INTEGER NULL,
  `gid_number` INTEGER NULL,
  `properties` TEXT NULL,
  PRIMARY KEY ( `owner`,`name` )
);
CREATE UNIQUE INDEX `UQE_group_name` ON `group` (`name`);
CREATE INDEX `IDX_group_gid_number` ON `group` (`gid_number`);
