pub mod lab;
pub mod fixture;
pub mod packet;
