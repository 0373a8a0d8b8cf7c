//! Persistence through sqlx on SQLite: migrations, domain tables, the audit chain
