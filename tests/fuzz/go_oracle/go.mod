module ds01.test/gooracle

go 1.19
