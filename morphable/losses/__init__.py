"""Loss families, one file each: a pure function plus (where configuration is needed) a thin Module."""
