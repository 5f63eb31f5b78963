//! todo-eventd
pub mod world;
pub mod event;
