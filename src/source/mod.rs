//! Change sources. A source reads changes and their positions; it never
//! acknowledges a position itself (the appender decides when it is durable).

pub mod mongo;
pub mod postgres;
