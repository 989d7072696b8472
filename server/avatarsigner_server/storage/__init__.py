"""The server's own requests to the bucket (never a URL handed to a caller).

    s3_http  one plain HTTP request, bounded, no redirect followed
    objects  an identity's GET and PUT of single objects, signed as it goes
"""
