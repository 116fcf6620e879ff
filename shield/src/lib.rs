//! safegate shield (see issues).
