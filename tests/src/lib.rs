pub mod fixture;
pub mod fuzz;
pub mod lab;
pub mod packet;
