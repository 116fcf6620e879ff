//! safegate guard (see issues).
